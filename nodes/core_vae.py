"""ComfyUI's own VAE (core *Load VAE*, the VAE socket) in place of DROPLET_VAE.

ComfyUI core loads the CogVideoX VAE itself in recent versions (comfy/ldm/cogvideo/vae.py; 0.33
has it, the January 2026 release 0.8.0 does not). The release's vae/diffusion_pytorch_model.safetensors
loads there as it is: core's CogVideoX VAE has diffusers' key names. Core's VAE works on
ComfyUI's conventions: IMAGE frames [F, H, W, 3] in 0..1 in, unscaled latents [B, 16, F, h, w]
out (the distribution's mean), and back. It batches frames its own way (encode: 8 frames at a
time, the remainder first, where the reference takes 4; decode: its rolling decode), so its
video differs slightly from the reference's: docs/core_vae.md has the measured difference.
"""

import importlib

import torch

from ..droplet_core.axes import video_to_images
from ..droplet_core.conditioning import all_masked, inpaint_from_latents, masked_video
from .components import DropletVae

VAE_TYPES = "DROPLET_VAE,VAE"  # the pack's VAE, or core's
VAE_TOOLTIP = ("From a DropletVideo loader, or ComfyUI's own Load VAE with the CogVideoX/DropletVideo VAE file "
               "(ComfyUI versions whose core loads the CogVideoX VAE; slightly different from the reference: see "
               "docs/core_vae.md).")
CORE_MODULE = "comfy.ldm.cogvideo.vae"


def is_core_vae(vae) -> bool:
    """True for a core VAE fit for DropletVideo; False for the pack's DROPLET_VAE. Anything else
    (a core VAE this ComfyUI cannot run as CogVideoX's, another model's VAE) is refused."""
    if isinstance(vae, DropletVae):
        return False
    try:
        core = importlib.import_module(CORE_MODULE)
    except ImportError as error:
        raise ValueError("this ComfyUI's core cannot load the CogVideoX VAE (it has no comfy/ldm/cogvideo): connect "
                         "the vae of DropletVideo VAE Loader (or DropletVideo Model Loader) instead, or update "
                         "ComfyUI.") from error
    model = getattr(vae, "first_stage_model", None)
    if not isinstance(model, core.AutoencoderKLCogVideoX):
        raise ValueError(f"this VAE is a {type(model).__name__}, not the CogVideoX VAE DropletVideo uses: load the "
                         f"DropletVideo/CogVideoX VAE file with Load VAE, or use DropletVideo VAE Loader.")
    return True


@torch.no_grad()
def core_encode(vae, pixels: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """[1, 3, F, H, W] video in -1..1 -> unscaled latents [1, 16, F_lat, h, w] (core's mean)."""
    frames = video_to_images((pixels[0].float() + 1) / 2)  # IMAGE frames; core maps them back to -1..1
    return (vae.encode_tiled(frames) if tiled else vae.encode(frames)).float()


def core_inpaint_latents(vae, video: torch.Tensor, mask: torch.Tensor, latent_shape, noise_aug_strength=None,
                         noise_generator=None, tiled: bool = False) -> torch.Tensor:
    """droplet_core.conditioning.inpaint_latents with core's VAE, unscaled (scaling 1)."""
    frames, height, width = latent_shape
    if all_masked(mask):
        return torch.zeros(1, frames, 1 + vae.latent_channels, height, width)
    masked, mask = masked_video(video, mask, noise_aug_strength, noise_generator)
    return inpaint_from_latents(core_encode(vae, masked, tiled), mask, 1.0)


@torch.no_grad()
def core_decode(vae, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Unscaled [B, 16, F_lat, h, w] -> IMAGE frames [B, F, H, W, 3] in 0..1."""
    return vae.decode_tiled(latents) if tiled else vae.decode(latents)
