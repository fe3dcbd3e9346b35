"""Reading images and writing videos. Frames are [F, H, W, 3] float in 0..1 (or uint8).

Playback fps is a file property only: the FPS condition of the model is separate (the
reference writes every video at 8 fps whatever FPS it conditioned on).
"""

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PLAYBACK_FPS = 8
SUFFIXES = (".mp4", ".gif", ".npz", "/ (folder of PNG frames)")


def load_image(path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference image {path} does not exist.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"{path} is not an image PIL can read ({error}).") from error


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[F, H, W, 3] uint8, truncating as the reference's `(x * 255).astype(np.uint8)` does."""
    if frames.dtype == torch.uint8:
        return frames.numpy()
    return (frames.clamp(0, 1) * 255).numpy().astype(np.uint8)


def write_video(frames: torch.Tensor, path, fps: float = PLAYBACK_FPS) -> Path:
    """Writes .mp4 (H.264), .gif, .npz (key `frames`, float32 [F, H, W, 3]) or a PNG folder."""
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [F, H, W, 3] with F >= 1, got {tuple(frames.shape)}.")
    if fps <= 0:
        raise ValueError(f"playback fps {fps} must be positive (the reference writes 8).")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        np.savez(path, frames=frames.float().numpy())
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in to_uint8(frames)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    elif suffix == ".mp4":
        _write_mp4(to_uint8(frames), path, fps)
    elif suffix == "":
        path.mkdir(exist_ok=True)
        for index, frame in enumerate(to_uint8(frames)):
            Image.fromarray(frame).save(path / f"frame_{index:04d}.png")
    else:
        raise ValueError(f"unknown output type {suffix!r}: use one of {', '.join(SUFFIXES)}.")
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            if width % 2 or height % 2:  # yuv420p needs even sizes
                frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path, max_frames: int = 0) -> torch.Tensor:
    """[F, H, W, 3] float 0..1 from a video file (for video-to-video input)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input video {path} does not exist.")
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path} holds no video frames.")
    return torch.from_numpy(np.stack(frames)).float() / 255
