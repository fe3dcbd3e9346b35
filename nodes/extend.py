"""DropletVideoExtend: the conditioning of a segment that continues a video (IMAGE frames).

Chain: ... -> VAE Decode -> [Join Segments] -> Extend -> Sampler -> VAE Decode -> Join Segments
-> Extend -> ... Each Extend has its own prompt (the positive it is given) and FPS."""

from ..droplet_core import shapes
from ..droplet_core.conditioning import NOISE_AUG_STRENGTH
from ..droplet_core.continuation import DEFAULT_OVERLAP, continuation_video_and_mask, known_latent_frames, last_frames
from ..droplet_core.shapes import RESIZE_MODES
from .core_vae import VAE_TOOLTIP, VAE_TYPES
from .image_encode import CONDITIONING_INPUTS, FPS_INPUT, SIZE_INPUTS, encode_conditioning
from .native.conditioning import with_values

# How many latent frames of the segment are known (the DropletVideo Sampler puts their clean
# latents back after sampling, as the engine does: sample_plan.paste_known).
KNOWN = "droplet_known_latent_frames"
OVERLAP_INPUT = ("INT", {"default": DEFAULT_OVERLAP, "min": 1, "max": 1021, "step": 4, "tooltip": "Frames of the "
                         "previous video the new segment starts from (4k+1: 1, 5, 9, 13 ...). 1 = its last frame "
                         f"only (like image-to-video); {DEFAULT_OVERLAP} (3 latent frames) carries the motion over. "
                         "Join Segments drops the segment's copy of them: use the same value there."})


class DropletVideoExtend:
    DESCRIPTION = ("Continues a video: the previous frames' last `overlap` frames are held as known at the start of "
                   "the new segment (mask 0, their VAE latents in the inpaint channels), the rest is generated, with "
                   "this node's prompt and FPS. Sample it (DropletVideo Sampler), decode with trim_to_frames on, and "
                   "join with DropletVideo Join Segments.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The new segment's prompt with the known frames and FPS.", "The negative prompt with the "
                       "same conditions.", "An empty video latent of the segment's size, for the sampler.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **CONDITIONING_INPUTS,
                "vae": (VAE_TYPES, {"tooltip": VAE_TOOLTIP}),
                "previous": ("IMAGE", {"tooltip": "The video so far (VAE Decode's or Join Segments' frames, or a "
                                       "loaded video): its last `overlap` frames start the new segment."}),
                **SIZE_INPUTS,
                "fps": FPS_INPUT,
                "overlap": OVERLAP_INPUT,
                "resize_mode": (RESIZE_MODES, {"default": "stretch", "tooltip": "A previous video of another size "
                                               "is stretched, centre-cropped or padded to width x height."}),
                "noise_augmentation": ("BOOLEAN", {"default": False, "tooltip": "Noise on the known frames, for a "
                                                   "model whose config says add_noise_in_inpaint_model."}),
                "noise_aug_strength": ("FLOAT", {"default": NOISE_AUG_STRENGTH, "min": 0.0, "max": 1.0,
                                                 "step": 0.0001, "tooltip": "Std of that noise (reference 0.0563)."}),
                "noise_aug_seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of "
                                           "that noise (the engine uses the segment's seed)."}),
                "vae_tiling": ("BOOLEAN", {"default": False, "tooltip": "Encode in spatial tiles (less memory)."}),
            },
        }

    def encode(self, positive, negative, vae, previous, width, height, frames, fps, overlap, resize_mode,
               noise_augmentation, noise_aug_strength, noise_aug_seed, vae_tiling):
        shapes.check_size(width, height)
        frames = shapes.round_frames(frames)
        known = last_frames(previous.float().cpu(), overlap, width, height, resize_mode)
        video, mask = continuation_video_and_mask(known, frames)
        positive, negative, latent = encode_conditioning(positive, negative, vae, video, mask, fps,
                                                         noise_aug_strength if noise_augmentation else None,
                                                         noise_aug_seed, vae_tiling)
        count = {KNOWN: known_latent_frames(overlap)}
        return with_values(positive, count), with_values(negative, count), latent
