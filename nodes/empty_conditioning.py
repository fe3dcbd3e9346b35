"""DropletVideoEmptyConditioning: text-to-video (every frame masked) without a VAE."""

from ..droplet_core import shapes
from .components import ImageCond
from .image_encode import SIZE


class DropletVideoEmptyConditioning:
    DESCRIPTION = ("Text-to-video conditioning: every frame masked, which the reference encodes as zeros. Also the "
                   "conditioning for video-to-video (DropletVideoVAEEncode + the sampler's latent input).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_IMAGE_COND",)
    RETURN_NAMES = ("image_cond",)
    OUTPUT_TOOLTIPS = ("All-masked conditioning and the video size, for DropletVideoSampler.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 672, **SIZE, "tooltip": "Video width, a multiple of 16 (default 672)."}),
            "height": ("INT", {"default": 384, **SIZE, "tooltip": "Video height, a multiple of 16 (default 384)."}),
            "frames": ("INT", {"default": 85, "min": 1, "max": 1024, "step": 4, "tooltip": "Video length; rounded "
                               "down to 4k+1 (1, 5, ... 85)."}),
        }}

    def build(self, width, height, frames):
        shapes.check_size(width, height)
        return (ImageCond(None, width, height, shapes.round_frames(frames)),)
