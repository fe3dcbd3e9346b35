"""ComfyUI IMAGE tensors ([B, H, W, 3] float in 0..1) to the PIL images the engine takes."""

import numpy as np
import torch
from PIL import Image

from ..droplet_core.shapes import aspect_box, check_resize_mode


def first_image(image: torch.Tensor, name: str) -> Image.Image:
    """The batch's first image as RGB uint8, round(x * 255): a PNG loaded by LoadImage comes
    back with exactly its pixel values."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be an IMAGE [batch, height, width, 3], got shape {tuple(image.shape)}.")
    if image.shape[0] == 0:
        raise ValueError(f"{name} is an empty image batch: connect a node that outputs at least one image "
                         f"(e.g. Load Image).")
    pixels = (image[0, ..., :3].float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Shapes the image to the video's aspect ratio; the engine then resizes it (bicubic).

    stretch: unchanged (the reference's plain resize); crop: centre crop; pad: black borders.
    """
    check_resize_mode(mode)
    src_w, src_h = image.size
    if mode == "stretch" or src_w * height == src_h * width:
        return image
    w, h = aspect_box(width, height, src_w, src_h, mode)
    if mode == "crop":
        left, top = (src_w - w) // 2, (src_h - h) // 2
        return image.crop((left, top, left + w, top + h))
    canvas = Image.new("RGB", (w, h))
    canvas.paste(image.convert("RGB"), ((w - src_w) // 2, (h - src_h) // 2))
    return canvas
