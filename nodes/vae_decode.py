"""DropletVideoVAEDecode: LATENT to IMAGE frames."""

import comfy.model_management
import torch

from ..droplet_core import shapes
from ..droplet_core.axes import video_to_images
from ..droplet_core.vae_ops import decode_to_frames
from . import latent_layout
from .components import load_for_compute, module_dtype
from .core_vae import VAE_TOOLTIP, VAE_TYPES, core_decode, is_core_vae
from .latent_scale import SCALE, decode_scale, log_once
from .memory import vae_decode_memory


class DropletVideoVAEDecode:
    DESCRIPTION = ("Decodes DropletVideo latents to frames. Like the reference, an even number of latent frames "
                   "decodes to 4 frames each (85 requested -> 88 frames); trim_to_frames keeps the 4k+1 frames "
                   "instead.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The video as an IMAGE batch, one image per frame.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPES, {"tooltip": VAE_TOOLTIP}),
            "latent": ("LATENT", {"tooltip": "From DropletVideo Sampler, KSampler, or DropletVideo VAE Encode."}),
            "tiling": ("BOOLEAN", {"default": False, "tooltip": "Decode in spatial tiles: much less memory, "
                                   "faint seams possible."}),
            "trim_to_frames": ("BOOLEAN", {"default": False, "tooltip": "Keep (latent frames - 1) * 4 + 1 frames "
                                           "(the requested count) instead of the reference's output."}),
        }}

    def decode(self, vae, latent, tiling, trim_to_frames):
        latents = latent_layout.from_comfy(latent)  # [B, F, C, h, w], unscaled
        if not bool(torch.isfinite(latents).all()):  # core samplers do not check each step as ours does
            raise ValueError("the latent holds NaN/inf values, which would decode to a black video. Usual causes: "
                             "a damaged LoRA or model file, fp16 overflow (use bf16 or fp32), or an extreme cfg.")
        keep = shapes.video_frames(latents.shape[1]) if trim_to_frames else None
        out = comfy.model_management.intermediate_device()
        if is_core_vae(vae):
            if SCALE in latent:
                log_once(f"DropletVideo VAE Decode: core Load VAE's VAE carries no config: the latent is decoded "
                         f"at the scale it was sampled at, {latent[SCALE]}.")
            return (torch.cat([core_decode(vae, video[None], tiling)[0, :keep].to(out)
                               for video in latent["samples"]]),)
        # decode_to_frames takes the transformer's space: the latents x the factor they were sampled at
        latents = latents * decode_scale("DropletVideo VAE Decode", latent, vae.scaling_factor)
        module = vae.patcher.model.module
        scale = shapes.SPATIAL_COMPRESSION
        memory = vae_decode_memory(latents.shape[1], latents.shape[3] * scale, latents.shape[4] * scale,
                                   module_dtype(module), tiling)
        module = load_for_compute(vae.patcher, memory)
        videos = [decode_to_frames(module, video[None], tiling)[0, :, :keep].to(out) for video in latents]
        return (video_to_images(torch.cat(videos, dim=1)),)
