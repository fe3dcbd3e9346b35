"""DropletVideoImageEncode: start (and end) frame to the inpaint conditioning and the FPS, on
positive and negative CONDITIONING (native/conditioning.py)."""

import comfy.model_management
import torch

from ..droplet_core import shapes
from ..droplet_core.shapes import RESIZE_MODES
from ..droplet_core.conditioning import NOISE_AUG_STRENGTH, i2v_video_and_mask, inpaint_latents
from ..droplet_core.preview import fit_rgb_projection
from .components import load_for_compute, module_dtype
from .context_windows import check_model_frames, table_remedy
from .core_vae import VAE_TOOLTIP, VAE_TYPES, core_inpaint_latents, is_core_vae
from .fps_condition import FPS_DEFAULT, IGNORED_ON_DROPLET3D
from .images import first_image, fit
from .latent_scale import vae_scale
from .memory import vae_encode_memory
from .native.conditioning import video_conditioning

SIZE = {"min": 16, "max": 2048, "step": 16}
CONDITIONING_INPUTS = {
    "positive": ("CONDITIONING", {"tooltip": "The prompt (DropletVideo Text Encode, or core CLIP Text Encode with "
                                  "Load CLIP type cogvideox)."}),
    "negative": ("CONDITIONING", {"tooltip": "The negative prompt (used when cfg > 1)."}),
}
SIZE_INPUTS = {
    "width": ("INT", {"default": 672, **SIZE, "tooltip": "Video width, a multiple of 16 (default 672)."}),
    "height": ("INT", {"default": 384, **SIZE, "tooltip": "Video height, a multiple of 16 (default 384)."}),
    "frames": ("INT", {"default": 85, "min": 1, "max": 1024, "step": 4, "tooltip": "Video length; rounded down to "
                       "4k+1 (1, 5, ... 85). The model's positional table sets the maximum (85 for the release) "
                       "unless the sampler's long_video is on or the MODEL has core context windows."}),
}
# Image Encode cannot see the sampler's long_video: its model input is what to take away. It sees
# core context windows on the MODEL (context_windows.py).
LONG_VIDEO_WITH_MODEL_INPUT = ("or, for a long video with the DropletVideo Sampler's long_video, disconnect this "
                               "node's `model` input, which checks the frame count against that table")
# 8: the official pipeline's own default (DropletVideo_Pipeline_Inpaint.__call__, fps=[8]); the official
# inference.py's --FPS, and so the CLI's --fps, default to 16.
FPS_INPUT = ("INT", {"default": FPS_DEFAULT, "min": 1, "max": 60, "tooltip": "DropletVideo's FPS condition: how "
                     "fast things move (the official samples use 4, 8, 16, 32). Not the playback rate of the file. "
                     "Default 8, the official pipeline's own default; the official inference.py and this pack's "
                     "command line use 16. " + IGNORED_ON_DROPLET3D})


def latent_shape(width: int, height: int, frames: int):
    """(latent frames, latent height, latent width) of a video."""
    scale = shapes.SPATIAL_COMPRESSION
    return shapes.latent_frames(frames), height // scale, width // scale


class DropletVideoImageEncode:
    DESCRIPTION = ("Image-to-video conditioning: the start image held on the first frame (and an end image on the "
                   "last), the other frames masked, VAE-encoded as the reference does, plus the FPS condition, "
                   "attached to positive and negative. Without images it gives the all-masked (text-to-video) "
                   "conditioning.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the image and FPS conditions.", "The negative prompt with the same "
                       "conditions.", "An empty video latent of this size, for a sampler (DropletVideo Sampler or "
                       "KSampler).")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **CONDITIONING_INPUTS,
                "vae": (VAE_TYPES, {"tooltip": VAE_TOOLTIP}),
                **SIZE_INPUTS,
                "fps": FPS_INPUT,
                "resize_mode": (RESIZE_MODES, {"default": "stretch", "tooltip": "How images meet the video size: "
                                               "stretch (the reference's plain resize), crop (centre), pad (black)."}),
                "noise_augmentation": ("BOOLEAN", {"default": False, "tooltip": "Add noise to the conditioning "
                                                   "frames. Turn on only for a model whose config says "
                                                   "add_noise_in_inpaint_model (the release does not)."}),
                "noise_aug_strength": ("FLOAT", {"default": NOISE_AUG_STRENGTH, "min": 0.0, "max": 1.0,
                                                 "step": 0.0001, "tooltip": "Std of that noise (reference 0.0563)."}),
                "noise_aug_seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed "
                                           "of that noise (the reference uses the sampler's seed)."}),
                "vae_tiling": ("BOOLEAN", {"default": False, "tooltip": "Encode in spatial tiles: less memory, "
                                           "slightly different latents from the reference."}),
            },
            "optional": {
                "start_image": ("IMAGE", {"tooltip": "First frame (the batch's first image)."}),
                "end_image": ("IMAGE", {"tooltip": "Optional last frame; needs a start_image."}),
                "model": ("MODEL", {"tooltip": "Optional: the DropletVideo MODEL, to refuse more frames than its "
                                    "positional table holds before the VAE encode runs, unless the MODEL carries "
                                    "core Context Windows (Manual) whose windows fit it. Leave it unconnected for a "
                                    "long video with the DropletVideo Sampler's long_video."}),
            },
        }

    def encode(self, positive, negative, vae, width, height, frames, fps, resize_mode, noise_augmentation,
               noise_aug_strength, noise_aug_seed, vae_tiling, start_image=None, end_image=None, model=None):
        shapes.check_size(width, height)
        frames = shapes.round_frames(frames)
        if model is not None:
            remedy = f"{table_remedy(model.model.droplet_config)}; {LONG_VIDEO_WITH_MODEL_INPUT}"
            check_model_frames(model, frames, remedy)
        if end_image is not None and start_image is None:
            raise ValueError("end_image needs a start_image: connect the first frame to start_image.")
        start, end = (None if image is None else fit(first_image(image, name), width, height, resize_mode)
                      for image, name in ((start_image, "start_image"), (end_image, "end_image")))
        video, mask = i2v_video_and_mask(frames, width, height, start, end)
        strength = noise_aug_strength if noise_augmentation else None
        return encode_conditioning(positive, negative, vae, video, mask, fps, strength, noise_aug_seed, vae_tiling,
                                   preview=start is not None)


def encode_conditioning(positive, negative, vae, video, mask, fps, strength, seed: int, tiled: bool,
                        preview: bool = True):
    """(positive, negative, LATENT) of a conditioning video [1, 3, F, H, W] and its mask, encoded with
    the pack's VAE or core's, with a preview projection fitted on its first frame when `preview`."""
    grid = latent_shape(video.shape[-1], video.shape[-2], video.shape[2])
    generator = torch.Generator().manual_seed(seed)
    if is_core_vae(vae):
        latents, scale = core_inpaint_latents(vae, video, mask, grid, strength, generator, tiled), 1.0
    else:
        latents, scale = droplet_inpaint_latents(vae, video, mask, grid, strength, generator, tiled)
    projection = fit_rgb_projection(latents[0, 0, 1:] / scale, video[0, :, 0]) if preview else None
    latents = latents.to(comfy.model_management.intermediate_device())
    return video_conditioning(positive, negative, grid, fps, latents, scale, projection, vae_scale(vae))


def droplet_inpaint_latents(vae, video, mask, grid, strength, generator, tiled: bool):
    """(the engine's inpaint latents, their scaling factor) with the pack's VAE."""
    frames, height, width = video.shape[2:]
    module = vae.patcher.model.module
    module = load_for_compute(vae.patcher, vae_encode_memory(frames, height, width, module_dtype(module), tiled))
    # float32 here; the model casts to its dtype, as the engine's single cast does.
    latents = inpaint_latents(module, video, mask, grid, torch.float32, strength, generator, tiled)
    return latents, module.config.scaling_factor
