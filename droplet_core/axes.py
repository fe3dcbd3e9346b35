"""Axis orders of latents and videos, and the only helpers that change them.

Latents: the engine (transformer, sampler) works in [B, F, C, h, w], latent frames first, as the
reference's transformer does; ComfyUI's LATENT and diffusers' VAE work in [B, C, F, h, w],
channels first. `frames_first` and `channels_first` convert between the two (views of the same
storage; callers that need a contiguous copy make one).

Videos: ComfyUI's IMAGE (and the engine's Result.frames) is [F, H, W, 3]; the VAE's decoded video
is [3, F, H, W] per batch item. `video_to_images` converts. The other way, pipeline.video_to_pixels
turns IMAGE frames into the VAE's [1, 3, F, H, W] input, resizing them as a torch image batch
[F, 3, H, W] on the way.

Not layouts of latents or videos, and so not here: one PIL image to [3, H, W]
(conditioning.py), the transformer's patch grid (unpatchify) and the positional tables
(positional.py).
"""

import torch


def frames_first(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, F, h, w] (ComfyUI's LATENT, diffusers' VAE) -> [B, F, C, h, w] (the engine)."""
    return latents.transpose(1, 2)


def channels_first(latents: torch.Tensor) -> torch.Tensor:
    """[B, F, C, h, w] (the engine) -> [B, C, F, h, w] (ComfyUI's LATENT, diffusers' VAE)."""
    return latents.transpose(1, 2)


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """One decoded video [3, F, H, W] -> IMAGE frames [F, H, W, 3]."""
    return video.permute(1, 2, 3, 0)


def images_to_video(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames [F, H, W, 3] -> one video [3, F, H, W] (the VAE's per-item layout)."""
    return frames.permute(3, 0, 1, 2)
