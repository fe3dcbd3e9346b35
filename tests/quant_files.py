"""The medium checkpoint's transformer as the release ships it (bf16, one file, config in its
metadata) and quantized copies of it written by the pack's writer: what the quantized-format
tests and bench/quant_table.py start from. The medium model, not the tiny one: ConvRot and
W4A8 quantize only Linears whose inputs come in groups of 256, which the tiny model's 32-wide layers do not."""

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from droplet_core.tiny import ensure_tiny_checkpoint

# The table's short video: small enough for a shared CPU; fp32 compute, so the distance to the bf16
# file's video is the format's rounding alone (bf16 compute on CPU is also several times slower).
VIDEO = dict(width=64, height=64, frames=5, steps=3, fps=8, seed=42, cfg=6.0, max_tokens=64, precision="fp32")
TEST_BLOCKS = 2  # the tests' copy keeps the first 2 of the 8 blocks: the 4-bit formats quantize slowly on CPU


def medium_release_file(models_dir: Path, blocks: int = 8) -> Path:
    """diffusion_models/medium<blocks>_bf16.safetensors: the medium transformer's first `blocks`
    blocks (all 8: the medium model itself) in bf16, its config (num_layers = blocks) in metadata."""
    out = models_dir / "diffusion_models" / f"medium{blocks}_bf16.safetensors"
    if not out.is_file():
        folder = ensure_tiny_checkpoint(models_dir / "DropletVideo" / "medium", preset="medium") / "transformer"
        weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        state = {k: v.to(torch.bfloat16) for k, v in weights.items()
                 if not k.startswith("transformer_blocks.") or int(k.split(".")[1]) < blocks}
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {**json.loads((folder / "config.json").read_text()), "num_layers": blocks}
        save_file(state, str(out), metadata={"config": json.dumps(config)})
    return out


def quantized_file(writer, models_dir: Path, fmt: str, quantize_modulation: bool = False,
                   blocks: int = TEST_BLOCKS) -> str:
    """medium_release_file(blocks) written in `fmt` (once per name) into diffusion_models/; its name."""
    name = f"medium{blocks}_{fmt}{'_mod' if quantize_modulation else ''}.safetensors"
    out = models_dir / "diffusion_models" / name
    if not out.is_file():
        writer.write_quantized(medium_release_file(models_dir, blocks), out, fmt, quantize_modulation)
    return name


def forward_inputs(model, frames: int = 2, size: int = 16):
    """Fixed random inputs of one transformer call ([B, F, C, H, W] latents, text, timestep, fps)."""
    config = model.model.diffusion_model.config
    generator = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, frames, config.noise_channels, size, size, generator=generator),
                encoder_hidden_states=torch.randn(1, 8, config.text_embed_dim, generator=generator),
                timestep=torch.tensor([500]), fps=torch.tensor([8]),
                inpaint_latents=torch.randn(1, frames, config.in_channels - config.noise_channels, size, size,
                                            generator=generator))


@torch.no_grad()
def forward(model, inputs, dtype=torch.bfloat16):
    device = model.load_device
    cast = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    return model.model.diffusion_model.predict(**cast).float().cpu()


def video_conditioning(pack, folder: str = "medium"):
    """(VAE, prompt conditioning) of the checkpoint folder, in VIDEO's precision."""
    from droplet_core.text import NEGATIVE_PROMPT

    _, vae, text_encoder = run_node(pack, "DropletVideoModelLoader", model_folder=folder, precision=VIDEO["precision"])
    conds = run_node(pack, "DropletVideoTextEncode", text_encoder=text_encoder, prompt="A panda plays a guitar.",
                     negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=True, max_tokens=VIDEO["max_tokens"])
    return vae, conds


def short_video(pack, model, vae, conds):
    """(frames, CPU seconds per step) of a short image-to-video run through the nodes (VIDEO)."""
    import numpy as np
    from PIL import Image

    start = torch.from_numpy(np.array(Image.open(Path(__file__).parent / "goldens" / "start.png").convert("RGB")))
    positive, negative, latent = run_node(
        pack, "DropletVideoImageEncode", positive=conds[0], negative=conds[1], vae=vae, width=VIDEO["width"],
        height=VIDEO["height"], frames=VIDEO["frames"], fps=VIDEO["fps"], resize_mode="stretch",
        noise_augmentation=False, noise_aug_strength=0.0563, noise_aug_seed=42, vae_tiling=False,
        start_image=start.float()[None] / 255)
    started = time.process_time()
    latent = run_node(pack, "DropletVideoSampler", model=model, positive=positive, negative=negative, latent=latent,
                      steps=VIDEO["steps"], cfg=VIDEO["cfg"], seed=VIDEO["seed"], scheduler="ddim",
                      use_dynamic_cfg=False, denoise=1.0)[0]
    per_step = (time.process_time() - started) / VIDEO["steps"]
    frames = run_node(pack, "DropletVideoVAEDecode", vae=vae, latent=latent, tiling=False, trim_to_frames=False)[0]
    return frames.float(), per_step


def run_node(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)
