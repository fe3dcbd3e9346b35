"""A tiny random-weight DropletVideo checkpoint in the exact released folder layout.

The architecture is the real one at a small width: 33 input channels, the FPS embedding, a
2-shard T5 encoder, a 4-level causal VAE. Every tensor's value is our own: `seeded_tensor` draws
it from a generator seeded by a hash of (component, tensor name), scaled by the tensor's kind.
diffusers and transformers only name the tensors and give their shapes (modules built on the
meta device), so an upgrade that reorders their init cannot change a weight, nor any golden.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .configs import TransformerConfig, VaeConfig, config_to_dict
from .sampling import RELEASE_SCHEDULER_CONFIG

logger = logging.getLogger(__name__)

VERSION = "tiny-v3"  # bump whenever a weight or config changes, so caches rebuild
SPIECE = Path(__file__).parent / "assets" / "tiny_spiece.model"
EXTRA_IDS = 100

# The positional grid of the reference defaults, 672x384 pixels x 85 frames (84x48 latents, 22
# latent frames), so the bundled workflows run as shipped on it; narrow everywhere else.
TRANSFORMER = TransformerConfig(
    num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16, time_embed_dim=32,
    text_embed_dim=32, num_layers=2, sample_width=84, sample_height=48, sample_frames=85)
VAE = VaeConfig(
    down_block_types=("DropletVideoDownBlock3D",) * 4, up_block_types=("DropletVideoUpBlock3D",) * 4,
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_height=128,
    sample_width=128)
T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4, "relative_attention_num_buckets": 8,
      "relative_attention_max_distance": 16, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0,
      "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "use_cache": False, "pad_token_id": 0,
      "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": False}
SCHEDULER = {"_class_name": "CogVideoXDDIMScheduler", **RELEASE_SCHEDULER_CONFIG}
# A larger random-weight model for CPU benchmarks (same layout, ~0.1B transformer).
MEDIUM = {
    "transformer": TransformerConfig(num_attention_heads=8, attention_head_dim=64, in_channels=33, out_channels=16,
                                     time_embed_dim=128, text_embed_dim=32, num_layers=8, sample_width=40,
                                     sample_height=24, sample_frames=13),
    "vae": VaeConfig(down_block_types=("DropletVideoDownBlock3D",) * 4, up_block_types=("DropletVideoUpBlock3D",) * 4,
                     block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8,
                     sample_height=192, sample_width=320),
}
MODEL_INDEX = {
    "_class_name": "DropletVideo_Pipeline_Inpaint", "_diffusers_version": "0.32.2",
    "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "DropletVideoTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLDropletVideo"]}


def default_dir() -> Path:
    if os.environ.get("DROPLET_TINY_DIR"):
        return Path(os.environ["DROPLET_TINY_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "droplet_video" / VERSION


def ensure_tiny_checkpoint(path=None, preset: str = "tiny") -> Path:
    """The tiny checkpoint's folder, built on first use (a second or two on CPU).

    preset "medium" builds the benchmark model instead (give it its own path)."""
    path = Path(path) if path else default_dir()
    transformer, vae = (TRANSFORMER, VAE) if preset == "tiny" else (MEDIUM["transformer"], MEDIUM["vae"])
    return build_once(path, lambda root: _write_checkpoint(root, transformer, vae))


def build_once(path: Path, write) -> Path:
    """`path`, written by `write(folder)` in a staging folder unless it already holds a checkpoint."""
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        write(staging)
        if not (path / "model_index.json").is_file():  # another process may have won the race
            shutil.rmtree(path, ignore_errors=True)
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("tiny checkpoint written to %s", path)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_checkpoint(root: Path, transformer: TransformerConfig, vae: VaeConfig) -> None:
    _write_json(root / "model_index.json", MODEL_INDEX)
    _write_json(root / "configuration.json", {"framework": "pytorch", "task": "image-to-video"})
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER)
    _write_transformer(root / "transformer", transformer)
    _write_vae(root / "vae", vae)
    _write_tokenizer(root / "tokenizer")
    _write_text_encoder(root / "text_encoder")


def seeded_tensor(component: str, name: str, shape) -> torch.Tensor:
    """One tensor of the tiny checkpoint: a function of (component, name, shape) only.

    Kinds by name and rank: biases 0.1*N; 1-D weights (norms) 1 + 0.1*N, not exactly 1 and 0,
    so a loader that drops them cannot pass; token embeddings N; the rest (linear, conv, relative
    position buckets) N / sqrt(3 * fan_in), the variance of torch's default init: latents keep
    unit scale over the steps and the decoded video stays inside 0..1 (N / sqrt(fan_in) clips
    four pixels in ten)."""
    seed = int.from_bytes(hashlib.sha256(f"{component}/{name}".encode()).digest()[:8], "little")
    noise = torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32,
                        device="cpu")
    if name.endswith("bias"):
        return 0.1 * noise
    if len(shape) == 1:
        return 1.0 + 0.1 * noise
    if name.split(".")[-2] in ("shared", "embed_tokens"):
        return noise
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    return noise / (3 * fan_in) ** 0.5


def seeded_state_dict(component: str, module: torch.nn.Module) -> dict:
    """Our values for every tensor of a module built on the meta device (library init unused)."""
    state = module.state_dict(keep_vars=True)
    params = {id(p) for p in module.parameters()}
    buffers = [k for k, v in state.items() if id(v) not in params]
    assert not buffers, f"{component}: persistent buffers {buffers} would need the library's values"
    return {name: seeded_tensor(component, name, state[name].shape) for name in sorted(state)}


def _save_component(folder: Path, state: dict, config: dict) -> None:
    _write_json(folder / "config.json", config)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def transformer_state(config: TransformerConfig) -> dict:
    from .transformer import DropletVideoTransformer3DModel

    with torch.device("meta"):
        model = DropletVideoTransformer3DModel(config)
    return seeded_state_dict("transformer", model)


def vae_state(config: VaeConfig) -> dict:
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("meta"):
        model = AutoencoderKLCogVideoX(**config.diffusers_kwargs())
    return seeded_state_dict("vae", model)


def t5_config() -> dict:
    """config.json of the tiny T5 encoder, written out (not T5Config.to_dict(), which varies by version)."""
    return {"architectures": ["T5EncoderModel"], "model_type": "t5", "torch_dtype": "float32",
            "vocab_size": _sentencepiece_size() + EXTRA_IDS, **T5}


def text_encoder_state() -> dict:
    """The T5 encoder's tensors, less `encoder.embed_tokens.weight` (tied to `shared.weight`)."""
    from transformers import T5Config, T5EncoderModel

    config = {k: v for k, v in t5_config().items() if k not in ("architectures", "model_type", "torch_dtype")}
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**config))
    state = seeded_state_dict("text_encoder", model)
    state.pop("encoder.embed_tokens.weight", None)
    return state


def _write_transformer(folder: Path, config: TransformerConfig) -> None:
    _save_component(folder, transformer_state(config), config_to_dict(config))


def _write_vae(folder: Path, config: VaeConfig) -> None:
    _save_component(folder, vae_state(config), config_to_dict(config, "AutoencoderKLDropletVideo"))


def _sentencepiece_size() -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(SPIECE)).get_piece_size()


def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SPIECE, folder / "spiece.model")
    size = _sentencepiece_size()
    extras = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "additional_special_tokens": extras}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "added_tokens.json", {tok: size + EXTRA_IDS - 1 - i for i, tok in enumerate(extras)})
    _write_json(folder / "tokenizer_config.json", {
        **special, "tokenizer_class": "T5Tokenizer", "extra_ids": EXTRA_IDS, "legacy": True,
        "model_max_length": 226, "clean_up_tokenization_spaces": True, "sp_model_kwargs": {}})


def _write_text_encoder(folder: Path) -> None:
    state = text_encoder_state()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(folder / name), metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in state.values())
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(folder / "config.json", t5_config())
