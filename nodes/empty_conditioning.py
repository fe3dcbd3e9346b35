"""DropletVideoEmptyConditioning: text-to-video (every frame masked) without a VAE."""

from ..droplet_core import shapes
from ..droplet_core.preview import color_pattern, fit_rgb_projection
from ..droplet_core.vae_ops import encode_mode
from .components import ImageCond, load_for_compute, module_dtype
from .image_encode import SIZE
from .memory import vae_encode_memory

PATTERN_SIZE = 128


def pattern_projection(vae):
    """The latent-to-RGB preview map, fitted on the VAE's encoding of the built-in colour pattern."""
    module = vae.patcher.model.module
    module = load_for_compute(vae.patcher, vae_encode_memory(1, PATTERN_SIZE, PATTERN_SIZE, module_dtype(module),
                                                             False))
    pattern = color_pattern(PATTERN_SIZE)
    latents = encode_mode(module, (pattern * 2 - 1)[None, :, None]) * module.config.scaling_factor
    return fit_rgb_projection(latents[0, :, 0], pattern)


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
        }, "optional": {
            "vae": ("DROPLET_VAE", {"tooltip": "Only for progress previews: the sampler's preview pictures need a "
                                    "latent-to-RGB map, fitted on this VAE's encoding of a built-in colour pattern. "
                                    "The video is the same with or without it."}),
        }}

    def build(self, width, height, frames, vae=None):
        shapes.check_size(width, height)
        projection = None if vae is None else pattern_projection(vae)
        return (ImageCond(None, width, height, shapes.round_frames(frames), rgb_projection=projection),)
