"""Encode and decode with the CogVideoX VAE, as the reference pipeline calls it.

Pixels are [B, 3, F, H, W] in -1..1 going in; latents come back as [B, 16, F_lat, h, w]
(unscaled); `decode_to_frames` takes [B, F_lat, 16, h, w] scaled latents.
"""

from typing import Optional

import torch

from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from .axes import channels_first, frames_first
from .vae_memory import decode_latents, encode_moments


def _device_and_dtype(vae):
    parameter = next(vae.parameters())
    return parameter.device, parameter.dtype


def set_tiling(vae, tiled: bool) -> None:
    if tiled:
        vae.enable_tiling()
        align_tiles(vae)
    else:
        vae.disable_tiling()


def _tiles_line_up(sample: int, latent: int, factor: float, scale: int) -> bool:
    """Whether diffusers' tiled encode and decode, with these tile sizes and overlap factor, step
    by exactly the rows each tile keeps (their own expressions, float rounding included)."""
    encode_step, encode_kept = int(sample * (1 - factor)), latent - int(latent * factor)
    decode_step, decode_kept = int(latent * (1 - factor)), sample - int(sample * factor)
    return sample == scale * latent and encode_step == scale * encode_kept and scale * decode_step == decode_kept


def align_tiles(vae) -> None:
    """diffusers' CogVideoX tiling assumes the tile stride in pixels is 8x the latent rows a tile
    keeps. The release's tiles (240 x 360 px, overlap 1/6 and 1/5) line up; other sample sizes
    (the tiny test VAE's 64 px tiles with 1/6) do not, and then tiled encodes come out the wrong
    size or hit 1-pixel tiles. This picks the overlap k / tile nearest the configured one that
    lines up (k = 0, no blending, always does)."""
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    for axis in ("height", "width"):
        sample, latent = getattr(vae, f"tile_sample_min_{axis}"), getattr(vae, f"tile_latent_min_{axis}")
        factor = getattr(vae, f"tile_overlap_factor_{axis}")
        if _tiles_line_up(sample, latent, factor, scale):
            continue
        for overlap in sorted(range(latent), key=lambda k: abs(k - latent * factor)):
            if _tiles_line_up(sample, latent, overlap / latent, scale):
                setattr(vae, f"tile_overlap_factor_{axis}", overlap / latent)
                break


def _posteriors(vae, pixels: torch.Tensor, tiled: bool):
    """The latent distribution of each video in the batch (diffusers' tiling, or the
    reference's frame batches: vae_memory.encode_moments)."""
    device, dtype = _device_and_dtype(vae)
    set_tiling(vae, tiled)
    for x in pixels.split(1):
        x = x.to(device, dtype)
        yield vae.encode(x)[0] if tiled else DiagonalGaussianDistribution(encode_moments(vae, x))


@torch.no_grad()
def encode_mode(vae, pixels: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """The distribution's mode, one video at a time (conditioning encodes)."""
    return torch.cat([posterior.mode() for posterior in _posteriors(vae, pixels, tiled)])


@torch.no_grad()
def encode_sample(vae, pixels: torch.Tensor, generator: Optional[torch.Generator],
                  tiled: bool = False) -> torch.Tensor:
    """A sample of the distribution (V2V latents). The reference draws it from the global RNG;
    a generator seeded with the same seed on the same device gives the same numbers."""
    return torch.cat([posterior.sample(generator=generator) for posterior in _posteriors(vae, pixels, tiled)])


def encode_video_latents(vae, pixels: torch.Tensor, generator: Optional[torch.Generator],
                         tiled: bool = False) -> torch.Tensor:
    """V2V start latents: a sample x scaling_factor, as [B, F_lat, C, h, w]."""
    return frames_first(encode_sample(vae, pixels, generator, tiled) * vae.config.scaling_factor)


@torch.no_grad()
def decode_to_frames(vae, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Scaled [B, F_lat, C, h, w] latents -> [B, 3, F, H, W] video in 0..1 (float32)."""
    device, dtype = _device_and_dtype(vae)
    set_tiling(vae, tiled)
    latents = channels_first(latents)
    latents = 1 / vae.config.scaling_factor * latents
    latents = latents.to(device, dtype)
    frames = vae.decode(latents).sample if tiled else decode_latents(vae, latents)
    return (frames / 2 + 0.5).clamp(0, 1).float()
