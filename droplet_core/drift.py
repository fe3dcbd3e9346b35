"""Drift control: each new segment's colour and contrast anchored to a reference.

Where: in pixel space, after the decode. There the statistics are what the viewer sees (the
VAE's latent channels mix colour and texture, so matching latent statistics moves detail too),
the correction is exact and cheap, and it never touches the sampler (any sampler, any model
patch). What: per colour channel, the segment's mean and standard deviation are mapped to the
reference's (x - m) * s_ref / s + m_ref, the gain kept within GAIN_RANGE so a segment that is
meant to be darker or flatter is pulled, not forced.

Seams: the correction fades in over RAMP_FRAMES after the seam (weight (i + 1) / (RAMP + 1) on
the i-th new frame, then 1), so the first new frame differs from its uncorrected self by at most
1 / (RAMP + 1) of the correction, and the overlap frames, which are the previous segment's own
(already anchored) frames, are never changed. The next segment is conditioned on the anchored
frames, so it starts from the reference's look instead of compounding the drift.

Frames are [F, H, W, 3] float in 0..1.
"""

from typing import Tuple

import torch

GAIN_RANGE = (0.5, 2.0)
RAMP_FRAMES = 12
Stats = Tuple[torch.Tensor, torch.Tensor]  # per-channel (mean [3], std [3])


def channel_stats(frames: torch.Tensor) -> Stats:
    pixels = frames.reshape(-1, frames.shape[-1]).float()
    return pixels.mean(0), pixels.std(0)


def ramp(count: int, ramp_frames: int = RAMP_FRAMES) -> torch.Tensor:
    """[count] weights: (i + 1) / (ramp_frames + 1) up to 1."""
    return ((torch.arange(count, dtype=torch.float32) + 1) / (ramp_frames + 1)).clamp(max=1.0)


def anchor(frames: torch.Tensor, reference: Stats, ramp_frames: int = RAMP_FRAMES) -> torch.Tensor:
    """The new frames of a segment with their channel statistics moved to `reference`'s, faded in."""
    mean, std = channel_stats(frames)
    ref_mean, ref_std = reference
    gain = (ref_std / std.clamp(min=1e-6)).clamp(*GAIN_RANGE)
    corrected = (frames.float() - mean) * gain + ref_mean
    weight = ramp(frames.shape[0], ramp_frames)[:, None, None, None]
    return (frames + weight * (corrected - frames)).clamp(0, 1)


def drift(frames: torch.Tensor, reference: Stats) -> float:
    """The drift figure: the largest per-channel |mean - mean_ref| + |std - std_ref| (0..1 units)."""
    mean, std = channel_stats(frames)
    return float(((mean - reference[0]).abs() + (std - reference[1]).abs()).max())
