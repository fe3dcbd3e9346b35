"""A tiny random-weight Droplet3D checkpoint in the released folder layout (tiny.py's, for Droplet3D).

Droplet3D's class names (Droplet3DTransformer3DModel, AutoencoderKLDroplet3D, Droplet3D*Block3D),
no FPS weights, and non-size values that differ from the library and class defaults, so that a
value assumed instead of read from the files shows in the parity tests: the VAE's scaling factor,
the scheduler's betas, and the positional grid (512x512 pixels x 85 frames, Droplet3D's reference
size). The T5 encoder and tokenizer are tiny.py's; weights come from tiny.seeded_tensor under the
same component names, so none depends on a library's init.

max_text_seq_length stays 226: the reference reads the video part of its positional table from
row 226 whatever the config says, so any other value makes the reference fail at its first step.
"""

from pathlib import Path
from typing import Optional

from . import tiny
from .configs import TransformerConfig, VaeConfig, config_to_dict
from .model_kind import DROPLET3D

VERSION = "droplet3d-v1"  # bump whenever a weight or config of this variant changes

TRANSFORMER = TransformerConfig(
    num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16, time_embed_dim=32,
    text_embed_dim=32, num_layers=2, sample_width=64, sample_height=64, sample_frames=85,
    model_kind=DROPLET3D.name)
VAE = VaeConfig(
    down_block_types=("Droplet3DDownBlock3D",) * 4, up_block_types=("Droplet3DUpBlock3D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_height=128,
    sample_width=128, scaling_factor=0.7)
SCHEDULER = {**tiny.SCHEDULER, "beta_start": 0.0009, "beta_end": 0.0135}
MODEL_INDEX = {
    "_class_name": DROPLET3D.pipeline_class, "_diffusers_version": "0.32.2",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", DROPLET3D.transformer_class],
    "vae": ["diffusers", DROPLET3D.vae_class]}


def default_dir() -> Path:
    """Beside tiny.py's checkpoint (and under DROPLET_TINY_DIR's parent when that is set)."""
    base = tiny.default_dir()
    return base.with_name(f"{base.name}-{VERSION}")


def ensure_tiny_droplet3d(path: Optional[Path] = None) -> Path:
    """The tiny Droplet3D checkpoint's folder, built on first use."""
    return tiny.build_once(Path(path) if path else default_dir(), write_checkpoint)


def write_checkpoint(root: Path) -> None:
    tiny._write_json(root / "model_index.json", MODEL_INDEX)
    tiny._write_json(root / "configuration.json", {"framework": "pytorch", "task": "image-to-video"})
    tiny._write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER)
    tiny._save_component(root / "transformer", tiny.transformer_state(TRANSFORMER), config_to_dict(TRANSFORMER))
    tiny._save_component(root / "vae", tiny.vae_state(VAE), config_to_dict(VAE, DROPLET3D.vae_class))
    tiny._write_tokenizer(root / "tokenizer")
    tiny._write_text_encoder(root / "text_encoder")
