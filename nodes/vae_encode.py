"""DropletVideoVAEEncode: IMAGE frames to LATENT, for video-to-video."""

import comfy.model_management
import torch

from ..droplet_core import shapes
from ..droplet_core.pipeline import video_to_pixels
from ..droplet_core.preview import fit_rgb_projection
from ..droplet_core.vae_ops import encode_video_latents
from . import latent_layout
from .components import load_for_compute, module_dtype
from .core_vae import VAE_TOOLTIP, VAE_TYPES, core_encode, is_core_vae
from .latent_scale import SCALE, vae_scale
from .memory import vae_encode_memory


class DropletVideoVAEEncode:
    DESCRIPTION = ("Encodes a video (an IMAGE batch, one image per frame) to DropletVideo latents for video-to-video: "
                   "the first 4k+1 frames, sampled from the VAE's distribution as the reference does. Frames must "
                   "have the size of the conditioning (a multiple of 16).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Video latents for DropletVideoSampler's latent input.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE_TYPES, {"tooltip": VAE_TOOLTIP}),
            "image": ("IMAGE", {"tooltip": "The video frames, e.g. from Get Video Components."}),
            "tiling": ("BOOLEAN", {"default": False, "tooltip": "Encode in spatial tiles: less memory."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed of the latent sample (the reference uses the sampler's seed). A core "
                             "VAE gives the distribution's mean instead, as core's VAE Encode does."}),
        }}

    def encode(self, vae, image, tiling, seed):
        if image.ndim != 4 or image.shape[0] == 0:
            raise ValueError(f"image must be a non-empty IMAGE batch [frames, height, width, 3], got "
                             f"{tuple(image.shape)}.")
        height, width = image.shape[1:3]
        try:
            shapes.check_size(width, height)
        except ValueError as error:
            raise ValueError(f"video frames are {width}x{height}: {error} Resize them first (core node "
                             f"'Upscale Image').") from error
        frames = shapes.round_frames(image.shape[0])
        pixels = video_to_pixels(image, frames, width, height)  # [1, 3, F, H, W] in -1..1
        if is_core_vae(vae):
            latents = core_encode(vae, pixels, tiling)
        else:
            latents = latent_layout.to_comfy(droplet_sample(vae, pixels, tiling, seed))["samples"]
        # the preview map: the causal VAE's first latent frame encodes the first frame alone
        projection = fit_rgb_projection(latents[0, :, 0], (pixels[0, :, 0] + 1) / 2)
        latent = {"samples": latents.to(comfy.model_management.intermediate_device())}
        scale = vae_scale(vae)
        if scale is not None:  # the DropletVideo samplers scale these latents by their VAE's factor
            latent[SCALE] = scale
        return (latent_layout.with_preview(latent, projection),)


def droplet_sample(vae, pixels: torch.Tensor, tiling: bool, seed: int) -> torch.Tensor:
    """A sample of the pack's VAE's distribution, unscaled, [1, F_lat, C, h, w] (the reference's V2V latents)."""
    frames, height, width = pixels.shape[2:]
    module = vae.patcher.model.module
    module = load_for_compute(vae.patcher, vae_encode_memory(frames, height, width, module_dtype(module), tiling))
    generator = torch.Generator(device=vae.patcher.load_device).manual_seed(seed)
    return encode_video_latents(module, pixels, generator, tiling) / vae.scaling_factor
