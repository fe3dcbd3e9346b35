"""The LATENT socket: ComfyUI's latent dict to the engine's tensor and back, with its checks.

ComfyUI's video latents are `{"samples": [B, C, F, H, W]}` (channels, then frames), as its
core video models use them. The engine (droplet_core) and its transformer work in
[B, F, C, H, W] (frames, then channels). The axis change itself is droplet_core/axes.py's
(`frames_first`, `channels_first`), which the samplers and the native model also call.

Values are the VAE's latents unscaled, as ComfyUI keeps them; the native model's latent format
multiplies by the VAE's scaling_factor (1.15258426 for the release) on the way in, so core
latent nodes and samplers work on them.
"""

import torch

from ..droplet_core.axes import channels_first, frames_first


def to_comfy(latents: torch.Tensor) -> dict:
    """Engine [B, F, C, H, W] -> LATENT {"samples": [B, C, F, H, W]}."""
    if latents.ndim != 5:
        raise ValueError(f"video latents must have 5 axes [B, F, C, H, W], got shape {tuple(latents.shape)}.")
    return {"samples": channels_first(latents).contiguous()}


def from_comfy(latent: dict) -> torch.Tensor:
    """LATENT {"samples": [B, C, F, H, W]} -> engine [B, F, C, H, W]."""
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(f"this LATENT has shape {tuple(samples.shape)}; a video LATENT is [batch, channels, "
                         f"frames, height, width]: make it with DropletVideoVAEEncode or DropletVideoSampler.")
    return frames_first(samples)
