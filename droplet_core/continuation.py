"""Continuing a video: a new segment conditioned on the last K frames of the one before.

DropletVideo is an inpainting model: its 17 extra input channels (mask + masked-video latents)
hold whichever frames are known. For image-to-video that is frame 0 alone; for a continuation it
is the previous video's last K frames, placed at the start of the new segment (mask 0 there, 1
elsewhere) and VAE-encoded with the rest masked (-1), exactly as the reference encodes its i2v
conditioning video (conditioning.inpaint_latents). The causal VAE gives latent frame j from
frames <= 4j only, so with K = 4k + 1 the known frames fill latent frames 0..k completely and
nothing generated leaks into them.

The new segment's first K frames repeat the previous video's last K. `join` keeps the previous
copy (those frames already exist and were shown) and drops the new one, so a joined video of
N segments has sum(frames) - (N - 1) * K frames: no frame twice, none missing.

Frames here are [F, H, W, 3] float in 0..1 (ComfyUI's IMAGE layout).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .axes import images_to_video
from .drift import Stats, anchor
from .shapes import TEMPORAL_COMPRESSION, aspect_box, check_resize_mode

# 9 frames = 3 latent frames: position, velocity and acceleration of the motion carry over (one
# frame is a still image, 5 frames one motion step), at 9/85 = 11% of a segment re-generated and
# dropped; 13 frames (15%) add little that 9 do not carry.
DEFAULT_OVERLAP = 9


def check_overlap(overlap: int, segment_frames: int) -> None:
    """An overlap of 4k + 1 frames, at least 1 and below the segment's frame count."""
    if overlap < 1:
        raise ValueError(f"overlap {overlap}: a continuation needs at least 1 known frame (1 = from the last frame "
                         f"alone, like image-to-video; default {DEFAULT_OVERLAP}, which carries the motion over).")
    if (overlap - 1) % TEMPORAL_COMPRESSION:
        low = (overlap - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1
        raise ValueError(f"overlap {overlap} is not on the VAE's 4k+1 frame grid (each latent frame holds 4 frames, "
                         f"the first one 1): use {low} or {low + TEMPORAL_COMPRESSION}.")
    if overlap >= segment_frames:
        raise ValueError(f"overlap {overlap} is not smaller than the segment's {segment_frames} frames, so the "
                         f"segment would add no new frame: use more frames per segment or a smaller overlap "
                         f"(default {DEFAULT_OVERLAP}).")


def check_previous(previous: torch.Tensor, overlap: int) -> None:
    if previous.ndim != 4 or previous.shape[-1] != 3:
        raise ValueError(f"the previous video must be frames [count, height, width, 3], got {tuple(previous.shape)}.")
    if previous.shape[0] < overlap:
        fits = (previous.shape[0] - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1
        raise ValueError(f"the previous video has {previous.shape[0]} frames, fewer than the overlap of {overlap}: "
                         f"use overlap {fits} or less, or a longer previous video.")


def fit_frames(frames: torch.Tensor, width: int, height: int, mode: str = "stretch") -> torch.Tensor:
    """Frames at width x height: stretched, centre-cropped or padded (black) to the aspect ratio,
    then resized (bilinear, antialiased). Frames of that size come back unchanged."""
    check_resize_mode(mode)
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames
    pixels = frames.permute(0, 3, 1, 2).float()
    if mode != "stretch" and src_w * height != src_h * width:
        w, h = aspect_box(width, height, src_w, src_h, mode)
        if mode == "crop":
            left, top = (src_w - w) // 2, (src_h - h) // 2
            pixels = pixels[:, :, top:top + h, left:left + w]
        else:
            left, top = (w - src_w) // 2, (h - src_h) // 2
            pixels = F.pad(pixels, (left, w - src_w - left, top, h - src_h - top))
    pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return pixels.clamp(0, 1).permute(0, 2, 3, 1)


def last_frames(previous: torch.Tensor, overlap: int, width: int, height: int, mode: str = "stretch"):
    """The previous video's last `overlap` frames at the segment's size (checked)."""
    check_previous(previous, overlap)
    return fit_frames(previous[-overlap:], width, height, mode)


def continuation_video_and_mask(known: torch.Tensor, frames: int):
    """(video 0..1 [1, 3, F, H, W], mask 0/255 [1, 1, F, H, W]) as i2v_video_and_mask builds them,
    with the K known frames first (mask 0) and the last of them repeated where the mask is 255
    (masked to -1 before encoding, as the reference does with its tiled start image)."""
    check_overlap(known.shape[0], frames)
    video = images_to_video(known).float()  # [3, K, H, W]
    rest = video[:, -1:].expand(-1, frames - known.shape[0], -1, -1)
    video = torch.cat([video, rest], dim=1)[None]
    mask = torch.full((1, 1, frames, *known.shape[1:3]), 255.0)
    mask[:, :, :known.shape[0]] = 0
    return video, mask


def known_latent_frames(overlap: int) -> int:
    """Latent frames filled by `overlap` known frames (4k + 1 -> k + 1)."""
    return (overlap - 1) // TEMPORAL_COMPRESSION + 1


def new_frames(segment: torch.Tensor, overlap: int, reference: Optional[Stats] = None) -> torch.Tensor:
    """What a continuing segment adds: its frames after the overlap (the previous video's copy of
    the overlap is kept), anchored to `reference` (drift.py) when one is given."""
    check_overlap(overlap, segment.shape[0])
    new = segment[overlap:]
    return new if reference is None else anchor(new, reference)


def join(previous: torch.Tensor, segment: torch.Tensor, overlap: int, reference: Optional[Stats] = None):
    """previous + new_frames(segment): sum of the frame counts less the overlap."""
    check_previous(previous, overlap)
    if segment.shape[1:] != previous.shape[1:]:
        raise ValueError(f"the new segment is {segment.shape[2]}x{segment.shape[1]}, the previous video "
                         f"{previous.shape[2]}x{previous.shape[1]}: scale the previous video to the segment's size "
                         f"(core Upscale Image, crop center) before joining.")
    return torch.cat([previous, new_frames(segment, overlap, reference).to(previous.dtype)])
