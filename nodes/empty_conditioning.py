"""DropletVideoEmptyConditioning: text-to-video (every frame masked) without a VAE."""

from ..droplet_core import shapes
from ..droplet_core.preview import color_pattern, fit_rgb_projection
from ..droplet_core.vae_ops import encode_mode
from .components import load_for_compute, module_dtype
from .core_vae import VAE_TYPES, core_encode, is_core_vae
from .image_encode import CONDITIONING_INPUTS, FPS_INPUT, SIZE_INPUTS, latent_shape
from .latent_scale import vae_scale
from .memory import vae_encode_memory
from .native.conditioning import video_conditioning

PATTERN_SIZE = 128


def pattern_projection(vae):
    """The preview map of unscaled latents, fitted on the VAE's encoding of the built-in colour pattern."""
    pattern = color_pattern(PATTERN_SIZE)
    pixels = (pattern * 2 - 1)[None, :, None]  # [1, 3, 1, H, W]
    if is_core_vae(vae):
        return fit_rgb_projection(core_encode(vae, pixels)[0, :, 0], pattern)
    module = vae.patcher.model.module
    module = load_for_compute(vae.patcher, vae_encode_memory(1, PATTERN_SIZE, PATTERN_SIZE, module_dtype(module),
                                                             False))
    return fit_rgb_projection(encode_mode(module, pixels)[0, :, 0], pattern)


class DropletVideoEmptyConditioning:
    DESCRIPTION = ("Text-to-video conditioning: every frame masked, which the reference encodes as zeros, and the "
                   "FPS condition, on positive and negative. Also the conditioning for video-to-video (connect "
                   "DropletVideo VAE Encode's latent to the sampler instead of this node's).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the FPS condition.", "The negative prompt with the FPS condition.",
                       "An empty video latent of this size, for a sampler (DropletVideo Sampler or KSampler).")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**CONDITIONING_INPUTS, **SIZE_INPUTS, "fps": FPS_INPUT}, "optional": {
            "vae": (VAE_TYPES, {"tooltip": "For progress previews: the sampler's preview pictures need a "
                                "latent-to-RGB map, fitted on this VAE's encoding of a built-in colour pattern "
                                "(DropletVideo's VAE or core Load VAE's). A DropletVideo VAE also tells the samplers "
                                "its scaling_factor: a core sampler refuses a MODEL that disagrees with it "
                                "(docs/latent_scale.md). The DropletVideo Sampler's video is the same with or "
                                "without it."}),
        }}

    def build(self, positive, negative, width, height, frames, fps, vae=None):
        shapes.check_size(width, height)
        projection = None if vae is None else pattern_projection(vae)
        return video_conditioning(positive, negative, latent_shape(width, height, shapes.round_frames(frames)), fps,
                                  projection=projection, vae_scale=None if vae is None else vae_scale(vae))
