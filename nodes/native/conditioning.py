"""What DropletVideo puts into CONDITIONING, and reads back out of it.

Each entry of a CONDITIONING list is [text embeddings [1, T, D], options]. The conditioning
nodes add to the options (on positive and negative alike, as core's image-to-video nodes do):
- "fps": the FPS condition (a number);
- "concat_latent_image": the masked conditioning video's latents, unscaled, [1, 16, F, H, W];
- "concat_mask": its mask at latent resolution, [1, 1, F, H, W];
- "droplet_rgb_projection": the latent-to-RGB map for progress previews (or absent), one tensor
  [3, C + 1] (weight, then bias), since core's walkers of conditioning options (Train LoRA's
  process_cond_list) recurse into lists and tuples until they reach a 0-d tensor and fail.
The model turns them into its 17 concat channels and the FPS embedding (model.py).
"""

from typing import Optional

import torch

from ...droplet_core.preview import Projection

FPS = "fps"
IMAGE = "concat_latent_image"
MASK = "concat_mask"
PREVIEW = "droplet_rgb_projection"
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


def preview_projection(conditioning: list) -> Optional[Projection]:
    """The (weight [3, C], bias [3]) the conditioning node fitted for previews, or None."""
    packed = options(conditioning).get(PREVIEW)
    return None if packed is None else (packed[:, :-1], packed[:, -1])


def fps_of(conditioning: list, name: str) -> float:
    fps = options(conditioning).get(FPS)
    if fps is None:
        raise ValueError(f"{name} has no FPS: pass it through DropletVideo Image Encode or DropletVideo Empty "
                         f"Conditioning, which set the FPS condition.")
    return fps


def video_conditioning(positive: list, negative: list, frames_shape, fps: float, inpaint=None, scale_factor=None,
                       projection=None):
    """(positive, negative, LATENT) of a conditioning node.

    `frames_shape` is (latent frames, height, width); `inpaint` the engine's [1, F, 1 + 16, h, w]
    (mask, then masked-video latents x scale_factor), or None for the all-masked text-to-video
    input. The LATENT is zeros of the video's size, for a sampler to start from."""
    values = {FPS: fps}
    if inpaint is not None:
        inpaint = inpaint.movedim(1, 2)  # [1, 17, F, h, w]
        values[MASK] = inpaint[:, :1].contiguous()
        values[IMAGE] = (inpaint[:, 1:] / scale_factor).contiguous()
    if projection is not None:
        weight, bias = projection
        values[PREVIEW] = torch.cat([weight, bias[:, None]], dim=1)
    latent = {"samples": torch.zeros((1, LATENT_CHANNELS, *frames_shape))}
    return with_values(positive, values), with_values(negative, values), latent
