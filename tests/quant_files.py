"""The medium checkpoint's transformer as the release ships it (bf16, one file, config in its
metadata) and quantized copies of it written by the pack's writer: what the quantized-format
tests and bench/quant_table.py start from. The medium model, not the tiny one: ConvRot and
W4A8 quantize only Linears whose inputs come in groups of 256, which the tiny model's 32-wide layers do not."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from droplet_core.tiny import ensure_tiny_checkpoint

MEDIUM_BF16 = "medium_bf16.safetensors"


def medium_release_file(models_dir: Path) -> Path:
    """diffusion_models/medium_bf16.safetensors: the medium transformer in bf16, config in metadata."""
    out = models_dir / "diffusion_models" / MEDIUM_BF16
    if not out.is_file():
        folder = ensure_tiny_checkpoint(models_dir / "DropletVideo" / "medium", preset="medium") / "transformer"
        state = {k: v.to(torch.bfloat16) for k, v in load_file(str(folder / "diffusion_pytorch_model.safetensors")).items()}
        out.parent.mkdir(parents=True, exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        save_file(state, str(out), metadata={"config": json.dumps(config)})
    return out


def quantized_file(writer, models_dir: Path, fmt: str, quantize_modulation: bool = False) -> str:
    """The medium transformer written in `fmt` (once per name) into diffusion_models/; its name."""
    name = f"medium_{fmt}{'_mod' if quantize_modulation else ''}.safetensors"
    out = models_dir / "diffusion_models" / name
    if not out.is_file():
        writer.write_quantized(medium_release_file(models_dir), out, fmt, quantize_modulation)
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
def forward(model, inputs):
    device, dtype = model.load_device, model.model.manual_cast_dtype or torch.bfloat16
    cast = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    return model.model.diffusion_model.predict(**cast).float().cpu()
