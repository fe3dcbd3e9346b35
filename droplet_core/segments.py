"""Longer than one clip: N segments, each with its own prompt, FPS and seed, joined into one video.

Segment 0 is image-to-video from the request's image (or text-to-video), unless a previous
video is given: then every segment continues the video so far (continuation.py). Segment i
gets seed `seed + i` unless it sets its own, so a plan re-runs to the same video and a change
to one segment's prompt leaves the segments before it unchanged.

Memory does not grow with the number of segments: each segment's latents and float frames are
freed once it is decoded; what stays is the joined video as uint8 (85 frames at 672x384 = 66 MB)
and the last K frames in float for the next conditioning. Drift control (drift.py) anchors each
generated segment to the first generated segment's statistics, or to the previous video's.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from .continuation import DEFAULT_OVERLAP, check_overlap, fit_frames, last_frames, new_frames
from .drift import channel_stats
from .prompt_schedule import check_prompts
from .sampling import StepCallback
from .shapes import round_frames
from .video_io import to_uint8


@dataclass
class Segment:
    prompt: str
    fps: float
    frames: Optional[int] = None  # None: the request's frame count
    seed: Optional[int] = None  # None: the request's seed + the segment's index


@dataclass
class Extension:
    """How segments continue each other."""

    overlap: int = DEFAULT_OVERLAP  # frames (4k + 1) the next segment is conditioned on
    drift_control: bool = True
    resize_mode: str = "stretch"  # for a previous video of another size (shapes.RESIZE_MODES)


PLAN_KEYS = {"prompt", "fps", "frames", "seed"}


def read_plan(path) -> List[Segment]:
    """A segments plan: a JSON list of {"prompt": str, "fps": number, "frames"?: int, "seed"?: int}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segments plan {path} does not exist.")
    entries = json.loads(path.read_text())
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a segments plan is a non-empty JSON list of {{\"prompt\": ..., \"fps\": ...}}.")
    segments = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"prompt", "fps"} <= entry.keys() or entry.keys() - PLAN_KEYS:
            raise ValueError(f"{path}: segment {index + 1} must be an object with prompt and fps (and optionally "
                             f"frames, seed), got {entry!r}.")
        segments.append(Segment(**entry))
    return segments


def check_segments(segments: List[Segment], request_frames: int, extension: Extension) -> None:
    check_prompts([segment.prompt for segment in segments])
    for segment in segments:
        check_overlap(extension.overlap, round_frames(segment.frames or request_frames))


def segment_request(request, segment: Segment, index: int, known: Optional[torch.Tensor]):
    """The request of one segment: its prompt, FPS, frames and seed, conditioned on `known`."""
    return replace(request, prompt=segment.prompt, fps=segment.fps, frames=segment.frames or request.frames,
                   seed=request.seed + index if segment.seed is None else segment.seed, known_frames=known,
                   image=request.image if known is None else None, end_image=None, trim_to_requested_frames=True)


def extend(pipe, request, segments: List[Segment], extension: Extension = Extension(),
           previous: Optional[torch.Tensor] = None, on_step: Optional[StepCallback] = None,
           on_segment: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """The joined video, uint8 [F, H, W, 3]: `previous` (if any) then every segment, each one's
    first `overlap` frames dropped where it continues (the earlier copy is kept).

    `pipe` is a DropletVideoPipeline (its `generate`); `on_segment(index, count)` is called before
    each segment."""
    check_segments(segments, request.frames, extension)
    pieces, tail, reference = [], None, None
    if previous is not None:
        previous = fit_frames(previous, request.width, request.height, extension.resize_mode)
        tail = last_frames(previous, extension.overlap, request.width, request.height)
        pieces.append(to_uint8(previous))
        reference = channel_stats(previous)
    for index, segment in enumerate(segments):
        if on_segment is not None:
            on_segment(index, len(segments))
        frames = pipe.generate(segment_request(request, segment, index, tail), on_step).frames
        if tail is None:  # the first segment starts the video and is the reference
            new, reference = frames, channel_stats(frames)
        else:  # as continuation.join: the previous copy of the overlap is kept
            new = new_frames(frames, extension.overlap, reference if extension.drift_control else None)
        tail = (new if tail is None else torch.cat([tail, new]))[-extension.overlap:].clone()  # not a view of `new`
        pieces.append(to_uint8(new))
        del frames, new
    return torch.from_numpy(np.concatenate(pieces))
