"""Checks and roundings of video sizes, with errors that suggest valid values."""

from typing import Tuple

SIZE_MULTIPLE = 16
TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8
# How a picture of another aspect ratio meets the video size: stretched (the reference's plain
# resize), centre-cropped, or padded with black.
RESIZE_MODES = ("stretch", "crop", "pad")


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE:
            raise ValueError(f"{name} {value} is too small: use at least {SIZE_MULTIPLE} (default 672x384).")
        if value % SIZE_MULTIPLE:
            low = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            raise ValueError(f"{name} {value} is not a multiple of {SIZE_MULTIPLE}: use {low} or {low + SIZE_MULTIPLE}.")


def round_frames(frames: int) -> int:
    """(n-1)//4*4+1, as the reference rounds the requested length (1 stays 1)."""
    if frames < 1:
        raise ValueError(f"frames {frames} must be at least 1 (default 85; valid counts are 4k+1: 1, 5, 9, ... 85).")
    return (frames - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1


def latent_frames(frames: int) -> int:
    """Latent frames of a video of `frames` frames, rounded to 4k+1 first (85 -> 22)."""
    return (round_frames(frames) - 1) // TEMPORAL_COMPRESSION + 1


def video_frames(latent_count: int) -> int:
    """The 4k+1 frames `latent_count` latent frames stand for (22 -> 85): what trimming keeps."""
    return (latent_count - 1) * TEMPORAL_COMPRESSION + 1


def decoded_frames(latent_count: int) -> int:
    """Frames the CogVideoX VAE returns. Quirk 3: it decodes 2 latent frames at a time, the first
    call taking the odd one out, and a call on an even count gives 4 frames each; so an even
    latent count gives 4*L frames (85 requested -> 22 latents -> 88), an odd one 4*L - 3 (9 -> 9)."""
    if latent_count % 2 == 0:
        return TEMPORAL_COMPRESSION * latent_count
    return video_frames(latent_count)


def size_for_budget(image_width: int, image_height: int, base_resolution: int) -> Tuple[int, int]:
    """(width, height), multiples of 16, keeping the image's aspect ratio at about base_resolution^2 pixels.

    The reference's helper rounds to whole pixels only; we then round to the nearest multiple of 16.
    """
    if image_width < 1 or image_height < 1:
        raise ValueError(f"image size {image_width}x{image_height} is empty.")
    ratio = (base_resolution * base_resolution / (image_width * image_height)) ** 0.5
    width = max(SIZE_MULTIPLE, round(image_width * ratio / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    height = max(SIZE_MULTIPLE, round(image_height * ratio / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    return width, height


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize_mode {mode!r}: use one of {', '.join(RESIZE_MODES)}.")


def aspect_box(width: int, height: int, src_w: int, src_h: int, mode: str) -> Tuple[int, int]:
    """(w, h) with the video's aspect ratio: the centred region of the source to keep (crop), or the
    canvas the source is centred on (pad)."""
    wider = src_w * height > src_h * width
    if mode == "crop":
        return (round(src_h * width / height), src_h) if wider else (src_w, round(src_w * height / width))
    return (src_w, round(src_w * height / width)) if wider else (round(src_h * width / height), src_h)
