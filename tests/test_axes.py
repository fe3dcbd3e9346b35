"""Axis orders (droplet_core/axes.py): what each helper maps where, the round trips, and that
latents and videos change order nowhere else."""

import re
from pathlib import Path

import torch

from droplet_core.axes import channels_first, frames_first, video_to_images

ROOT = Path(__file__).resolve().parents[1]
# Files whose own axis changes are not latent or video layouts (axes.py's docstring says which).
OTHER_LAYOUTS = {
    "droplet_core/axes.py": 2,  # video_to_images, images_to_video
    "droplet_core/continuation.py": 2,  # fit_frames: IMAGE frames as a torch image batch, for resizing
    "droplet_core/pipeline.py": 2,  # video_to_pixels: IMAGE frames as a torch image batch, then the VAE's input
    "droplet_core/conditioning.py": 1,  # one PIL image to [3, H, W]
    "droplet_core/transformer.py": 1,  # unpatchify's patch grid
    "droplet_core/positional.py": 2,  # the positional table's grid
}


def test_latents_change_between_engine_and_comfy_order():
    engine = torch.randn(2, 4, 16, 6, 8)  # [B, F, C, h, w]
    comfy = channels_first(engine)
    assert comfy.shape == (2, 16, 4, 6, 8)  # [B, C, F, h, w]
    assert torch.equal(comfy[1, :, 3], engine[1, 3])  # frame 3's channels
    assert torch.equal(frames_first(comfy), engine)
    assert torch.equal(channels_first(frames_first(comfy)), comfy)


def test_a_decoded_video_becomes_image_frames():
    video = torch.rand(3, 5, 6, 8)  # [3, F, H, W]
    images = video_to_images(video)
    assert images.shape == (5, 6, 8, 3)
    assert torch.equal(images[2, 4, 7], video[:, 2, 4, 7])  # frame 2, row 4, column 7: its RGB


def test_latents_and_videos_change_axis_order_only_through_axes():
    """A new permute/movedim in the pack is either one of axes.py's helpers or a layout of its own
    (then add it to OTHER_LAYOUTS with the reason, and to axes.py's docstring)."""
    found = {}
    for folder in ("droplet_core", "nodes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            count = len(re.findall(r"\.(permute|movedim)\(", path.read_text()))
            if count:
                found[str(path.relative_to(ROOT))] = count
    assert found == OTHER_LAYOUTS
