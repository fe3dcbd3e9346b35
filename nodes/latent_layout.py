"""The LATENT socket: ComfyUI's latent dict to the engine's tensor and back, with its checks.

ComfyUI's video latents are `{"samples": [B, C, F, H, W]}` (channels, then frames), as its
core video models use them. The engine (droplet_core) and its transformer work in
[B, F, C, H, W] (frames, then channels). The axis change itself is droplet_core/axes.py's
(`frames_first`, `channels_first`), which the samplers and the native model also call.

Values are the VAE's latents unscaled, as ComfyUI keeps them; the native model's latent format
multiplies by the VAE's scaling_factor (its config's: 0.7 in 5B-class CogVideoX VAEs) on the way in, so core latent nodes and
samplers work on them. A LATENT may record the factor it was encoded or sampled at under
"droplet_latent_scale" (latent_scale.py).

A LATENT may also carry "droplet_rgb_projection": the linear map (weight [3, 16], bias [3]) from
these unscaled latents to RGB that the DropletVideo samplers draw progress previews with. The
node that made the latents from pixels fits it (Image Encode, Empty Conditioning with a VAE,
VAE Encode); core latent nodes and KSampler copy the dict, so it follows the video.
"""

from typing import Optional

import torch

from ..droplet_core.axes import channels_first, frames_first
PREVIEW = "droplet_rgb_projection"


def with_preview(latent: dict, projection) -> dict:
    """`latent` with the preview projection added (unchanged when there is none)."""
    return latent if projection is None else {**latent, PREVIEW: projection}


def preview_of(latent: dict) -> Optional[tuple]:
    return latent.get(PREVIEW)


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
