"""What DropletVideo puts into CONDITIONING, and reads back out of it.

Each entry of a CONDITIONING list is [text embeddings [1, T, D], options]. The conditioning
nodes add to the options (on positive and negative alike, as core's image-to-video nodes do),
in core's own contract (comfy_extras/nodes_wan.py, model_base.WAN21.concat_cond):
- "fps": the FPS condition (a number);
- "concat_latent_image": the masked conditioning video's latents, unscaled, [1, 16, F, H, W];
- "concat_mask": its mask at latent resolution, [1, 1, F, H, W], 1 where frames are generated
  and 0 where they are given (the start frame, an end frame);
- "droplet_latent_scale": the scaling_factor of the pack VAE that encoded them (latent_scale.py).
So a core node that builds or edits these (WanImageToVideo's mask, a mask from core's mask
nodes) composes with the pack's. The model turns them into its 17 concat channels (the
reference's (1 - mask) x scaling_factor, then the latents x scaling_factor) and the FPS
embedding (model.py). The preview projection travels in the LATENT, not here (latent_layout.py).
"""

import torch

from ...droplet_core.axes import channels_first
from ..latent_layout import with_preview
from ..latent_scale import SCALE

FPS = "fps"
IMAGE = "concat_latent_image"
MASK = "concat_mask"
LATENT_CHANNELS = 16


def with_values(conditioning: list, values: dict) -> list:
    """A copy of `conditioning` with `values` set in every entry's options (the input is unchanged)."""
    return [[embeds, {**options, **values}] for embeds, options in conditioning]


def text_embeds(conditioning: list, name: str) -> torch.Tensor:
    """The one prompt's embeddings [1, T, D] of a CONDITIONING."""
    if not conditioning:
        raise ValueError(f"{name} is empty: connect a text encode node's output.")
    if len(conditioning) > 1:
        raise ValueError(f"{name} holds {len(conditioning)} prompts (combined or concatenated conditioning); the "
                         f"DropletVideo Sampler takes one: use core KSampler for area/combined conditioning.")
    return conditioning[0][0]


def options(conditioning: list) -> dict:
    return conditioning[0][1] if conditioning else {}


def fps_of(conditioning: list, name: str) -> float:
    fps = options(conditioning).get(FPS)
    if fps is None:
        raise ValueError(f"{name} has no FPS: pass it through DropletVideo Image Encode or DropletVideo Empty "
                         f"Conditioning, which set the FPS condition.")
    return fps


def video_conditioning(positive: list, negative: list, frames_shape, fps: float, inpaint=None, scale_factor=None,
                       projection=None, vae_scale=None):
    """(positive, negative, LATENT) of a conditioning node.

    `frames_shape` is (latent frames, height, width); `inpaint` the engine's [1, F, 1 + 16, h, w]
    ((1 - mask) x scale_factor, then masked-video latents x scale_factor), or None for the
    all-masked text-to-video input. The LATENT is zeros of the video's size, for a sampler to
    start from, carrying `projection` (the preview map of unscaled latents) when there is one.
    `vae_scale` is the pack VAE's scaling_factor (None for core's VAE, which has no config)."""
    values = {FPS: fps} if vae_scale is None else {FPS: fps, SCALE: vae_scale}
    if inpaint is not None:
        inpaint = channels_first(inpaint) / scale_factor  # [1, 17, F, h, w], unscaled
        values[MASK] = (1 - inpaint[:, :1]).contiguous()  # core's convention: 1 = generate
        values[IMAGE] = inpaint[:, 1:].contiguous()
    latent = with_preview({"samples": torch.zeros((1, LATENT_CHANNELS, *frames_shape))}, projection)
    return with_values(positive, values), with_values(negative, values), latent
