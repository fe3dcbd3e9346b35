"""DropletVideoSampler: the denoising loop, with ComfyUI's progress bar and Cancel."""

import logging

import comfy.model_management
import torch

from ..droplet_core import sampling
from ..droplet_core.long_video import SlidingWindowTransformer
from ..droplet_core.pipeline import initial_noise
from ..droplet_core.positional import fps_tensor
from ..droplet_core.sampling import SCHEDULERS, make_scheduler, timesteps_for
from ..droplet_core.step_cache import StepCache
from ..droplet_core.transformer import run_block
from . import latent_layout
from .components import ImageCond, TextCond, module_dtype
from .memory import transformer_memory
from .offload import transformer_for_sampling
from .progress import comfy_on_step

logger = logging.getLogger(__name__)


def check_text(cond: TextCond, name: str, text_dim: int) -> None:
    if cond.embeds.shape[-1] != text_dim:
        raise ValueError(
            f"{name} has hidden size {cond.embeds.shape[-1]} ({cond.source}), but the model expects text_embed_dim "
            f"{text_dim}: encode with the release's T5 (DropletVideo loader or DropletVideoT5Loader), or with "
            f"Load CLIP type cogvideox on T5-XXL weights.")


def check_video_latents(latents: torch.Tensor, cond: ImageCond) -> None:
    frames, height, width = cond.latent_shape
    if latents.shape[0] != 1 or (latents.shape[1], *latents.shape[3:]) != (frames, height, width):
        raise ValueError(
            f"the latent input is {tuple(latents.shape)} [B, F, C, H, W] but image_cond is for {cond.width}x"
            f"{cond.height}, {cond.frames} frames ({frames} latent frames of {height}x{width}): give the conditioning "
            f"node the input video's size and frame count (rounded to 4k+1), and use a batch of one video.")


def check_inputs(config, positive: TextCond, negative: TextCond, image_cond: ImageCond, video_latents,
                 denoise: float, long_video: bool = False, window_overlap: int = 0) -> None:
    for cond, name in ((positive, "positive"), (negative, "negative")):
        check_text(cond, name, config.text_embed_dim)
    if video_latents is not None:
        check_video_latents(video_latents, image_cond)
    elif denoise < 1.0:
        raise ValueError(f"denoise {denoise} < 1 needs a latent input (video-to-video): connect "
                         f"DropletVideoVAEEncode to latent, or set denoise to 1.0.")
    if long_video and window_overlap >= config.latent_frames:
        raise ValueError(f"window_overlap {window_overlap} must be below the model's window of "
                         f"{config.latent_frames} latent frames: use 0 (half a window) up to "
                         f"{config.latent_frames - 1}.")
    augmented = image_cond.noise_aug_strength is not None
    if image_cond.inpaint_latents is not None and config.add_noise_in_inpaint_model != augmented:
        logger.warning("the model's add_noise_in_inpaint_model is %s but the image conditioning was built with "
                       "noise_augmentation %s: set it to match on DropletVideoImageEncode",
                       config.add_noise_in_inpaint_model, augmented)


def sample_latent(model, positive: TextCond, negative: TextCond, image_cond: ImageCond, fps: int, steps: int,
                  cfg: float, seed: int, scheduler: str, use_dynamic_cfg: bool = False, denoise: float = 1.0,
                  latent=None, long_video: bool = False, window_overlap: int = 0, cache_threshold: float = 0.0) -> dict:
    """The sampler node's work (DropletVideoSampler, DropletVideoFPSSweep): a LATENT."""
    config = model.config
    video_latents = None if latent is None else latent_layout.from_comfy(latent)
    check_inputs(config, positive, negative, image_cond, video_latents, denoise, long_video, window_overlap)
    device = comfy.model_management.get_torch_device()
    sched = make_scheduler(model.scheduler_config, scheduler)
    timesteps = timesteps_for(sched, steps, denoise, device)
    if len(timesteps) == 0:  # denoise 0: the input, unchanged (as the engine)
        return latent

    frames, height, width = image_cond.latent_shape
    dtype = module_dtype(model.patcher.model.module)
    window = min(frames, config.latent_frames) if long_video else frames
    memory = transformer_memory(config, (window, height, width), positive.embeds.shape[1], 2 if cfg > 1 else 1,
                                dtype)
    noise = initial_noise((1, frames, config.out_channels or config.in_channels, height, width), seed, device, dtype)
    video = None if video_latents is None or denoise >= 1.0 else video_latents.to(device, dtype)
    latents = sampling.start_latents(sched, timesteps, noise, video)
    inpaint = image_cond.inpaint_latents
    if inpaint is None:  # all frames masked: zeros, as the reference encodes them
        inpaint = torch.zeros(1, frames, config.in_channels - noise.shape[2], height, width)
    cache = StepCache(cache_threshold, config.num_layers) if cache_threshold > 0 else None
    with transformer_for_sampling(model, memory, device) as (transformer, wrap_runner):
        if long_video:
            transformer = SlidingWindowTransformer(transformer, overlap=window_overlap,
                                                   on_window=cache.select_window if cache else None)
        latents = sampling.denoise(transformer, sched, latents, timesteps, positive.embeds.to(device, dtype),
                                   negative.embeds.to(device, dtype), inpaint.to(device, dtype), fps_tensor(fps),
                                   cfg, use_dynamic_cfg, torch.Generator(device=device).manual_seed(seed),
                                   comfy_on_step(len(timesteps), image_cond.rgb_projection),
                                   wrap_runner(cache or run_block))
    return latent_layout.to_comfy(latents.to(comfy.model_management.intermediate_device()))


class DropletVideoSampler:
    DESCRIPTION = ("Generates video latents with the DropletVideo transformer: classifier-free guidance on "
                   "[negative, positive], the FPS condition at every step. With a latent input and denoise < 1 it "
                   "re-generates that video (video-to-video). long_video renders past the model's trained length in "
                   "sliding windows; cache_threshold skips near-repeat steps.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Video latents, [batch, channels, frames, height, width], for DropletVideoVAEDecode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("DROPLET_MODEL", {"tooltip": "From a DropletVideo loader."}),
                "positive": ("DROPLET_COND", {"tooltip": "Prompt embeddings (DropletVideoTextEncode)."}),
                "negative": ("DROPLET_COND", {"tooltip": "Negative prompt embeddings (used when cfg > 1)."}),
                "image_cond": ("DROPLET_IMAGE_COND", {"tooltip": "From DropletVideoImageEncode or "
                                                      "DropletVideoEmptyConditioning; sets the video size."}),
                "fps": ("INT", {"default": 8, "min": 1, "max": 60, "tooltip": "FPS condition: how fast things move "
                                "(samples use 4, 8, 16, 32). Not the playback rate of the file."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Denoising steps (default 50)."}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance scale "
                                  "(default 6.0); 1.0 turns guidance off."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed. The same seed gives a different video on CPU and GPU."}),
                "scheduler": (list(SCHEDULERS), {"default": "ddim", "tooltip": "ddim is the reference's; others "
                                                 "are built on the same config."}),
                "use_dynamic_cfg": ("BOOLEAN", {"default": False, "tooltip": "The reference's cosine guidance "
                                                "schedule."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "1.0 starts "
                                      "from noise; below 1 needs a latent input (video-to-video strength)."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Video latents to re-generate (DropletVideoVAEEncode)."}),
                "long_video": ("BOOLEAN", {"default": False, "tooltip": "Sliding temporal windows: more frames "
                               "than the model was trained for (its positional table), blended over the overlap."}),
                "window_overlap": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With long_video: latent "
                                   "frames shared by neighbouring windows (1 latent frame = 4 frames); 0 = half a "
                                   "window."}),
                "cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "TeaCache-style step skipping: reuse the last step's transformer output while "
                                    "its input changes less than this in total. 0 = off; try 0.05-0.2. With long_video "
                                    "each window keeps its own history."}),
            },
        }

    def sample(self, model, positive, negative, image_cond, fps, steps, cfg, seed, scheduler, use_dynamic_cfg,
               denoise, latent=None, long_video=None, window_overlap=None, cache_threshold=None):
        return (sample_latent(model, positive, negative, image_cond, fps, steps, cfg, seed, scheduler,
                              use_dynamic_cfg, denoise, latent, bool(long_video), window_overlap or 0,
                              cache_threshold or 0.0),)
