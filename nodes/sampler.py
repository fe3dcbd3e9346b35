"""DropletVideoSampler: the reference's denoising loop (its DDIM and dynamic CFG; every step's latents
within 1e-4 of the official pipeline's in the fp32 parity tests) on the native MODEL, with ComfyUI's progress bar, previews and Cancel. The MODEL's patches that
the model's forward reads run; the others are refused by name (model_patches.py)."""

import logging

import comfy.model_management
import torch

from ..droplet_core.axes import channels_first, frames_first
from ..droplet_core.positional import check_latent_frames_fit, fps_tensor
from ..droplet_core.preview import rescaled
from ..droplet_core.sample_plan import SampleInputs, SamplingPlan, noise_shape, sample
from ..droplet_core.sampling import SCHEDULERS
from .context_windows import refuse_in_own_sampler
from .latent_layout import preview_of, with_preview
from .latent_scale import SCALE, sampling_scale
from .model_patches import check_patches
from .model_kind_checks import check_text_length, condition_fps
from .native.conditioning import IMAGE, MASK, options, text_embeds
from .extend import KNOWN
from .native.diffusion_model import EngineView
from .progress import comfy_on_step

logger = logging.getLogger(__name__)


def check_text(embeds: torch.Tensor, name: str, text_dim: int) -> None:
    if embeds.shape[-1] != text_dim:
        raise ValueError(
            f"{name} has hidden size {embeds.shape[-1]}, but the model expects text_embed_dim {text_dim}: encode "
            f"with the release's T5 (DropletVideo loader or DropletVideoT5Loader), or with Load CLIP type cogvideox "
            f"on T5-XXL weights.")


def check_latent(samples: torch.Tensor, config, strength: float, long_video: bool, window_overlap: int) -> None:
    channels = config.noise_channels
    if samples.ndim != 5 or samples.shape[0] != 1 or samples.shape[1] != channels:
        raise ValueError(f"the latent is {tuple(samples.shape)}; DropletVideo samples one video latent [1, {channels}, "
                         f"frames, height, width]: use the latent of DropletVideo Image Encode / Empty Conditioning, "
                         f"or DropletVideo VAE Encode's for video-to-video.")
    if strength < 1.0 and not samples.any():  # strength: the node's denoise input
        raise ValueError(f"denoise {strength} < 1 re-generates the latent input, but this latent is empty: connect "
                         f"DropletVideo VAE Encode's latent (video-to-video), or set denoise to 1.0.")
    if long_video and window_overlap >= config.latent_frames:
        raise ValueError(f"window_overlap {window_overlap} must be below the model's window of "
                         f"{config.latent_frames} latent frames: use 0 (half a window) up to "
                         f"{config.latent_frames - 1}.")
    check_latent_frames_fit(config, samples.shape[2], long_video)


def latent_scale(node: str, base, positive, latent: dict) -> float:
    """The factor the DropletVideo samplers scale latents by (latent_scale.sampling_scale)."""
    return sampling_scale(node, base.latent_format, options(positive), latent)


def sampler_inputs(base, positive, negative, latent: dict, plan: SamplingPlan, device, scale: float, fps=None,
                   prompt_schedule=None) -> SampleInputs:
    """What the DropletVideo samplers sample from, with the prompts and the latent checked: text
    embeddings (a schedule's per window), FPS (`fps` overrides the conditioning's), the inpaint
    channels, V2V start latents, a continuation's known latent frames (DropletVideo Extend); the
    latents x `scale` (latent_scale)."""
    config = base.droplet_config
    inputs = SampleInputs(text_embeds(positive, "positive"), fps_tensor(condition_fps(base, positive, fps)),
                          prompt_schedule=prompt_schedule, known_latent_frames=options(positive).get(KNOWN, 0))
    check_text_length(inputs.positive, config)
    if plan.uses_cfg:
        inputs.negative = text_embeds(negative, "negative")
    named = [(inputs.positive, "positive"), (inputs.negative, "negative")]
    for index, embeds in enumerate(prompt_schedule or []):
        named.append((embeds, f"prompt {index + 1} of prompt_schedule"))
    for embeds, name in named:
        if embeds is not None:
            check_text(embeds, name, config.text_embed_dim)
    samples = latent["samples"]
    check_latent(samples, config, plan.strength, plan.long_video, plan.window_overlap)
    if plan.strength < 1.0:
        inputs.start_video = frames_first(samples * scale)
    inputs.inpaint = engine_inpaint(base, positive, samples.shape[2:], device, scale)
    return inputs


def comfy_latent(latents: torch.Tensor, scale: float, projection=None) -> dict:
    """The engine's [1, F, C, h, w] latents, scaled by `scale`, as ComfyUI's LATENT (unscaled
    [1, C, F, h, w] on the intermediate device) recording that factor, with the input's preview
    projection."""
    out = channels_first(latents).float() / scale
    latent = {"samples": out.to(comfy.model_management.intermediate_device()), SCALE: scale}
    return with_preview(latent, projection)


def engine_preview(latent: dict, scale: float):
    """The LATENT's preview projection, for the engine's latents (x `scale`)."""
    projection = preview_of(latent)
    return None if projection is None else rescaled(projection, scale)


def engine_inpaint(model, conditioning: list, latent_size, device, scale: float) -> torch.Tensor:
    """The 17 concat channels in the engine's layout [1, F, 17, h, w], as the native model builds them."""
    values = options(conditioning)
    noise = torch.zeros(noise_shape(model.droplet_config, latent_size), device=device)
    concat = model.inpaint_channels(channels_first(noise), values.get(IMAGE), values.get(MASK), scale, device)
    return frames_first(concat)


def sampler_plan(model, steps: int, cfg: float, seed: int, scheduler: str, use_dynamic_cfg: bool = False,
                 strength: float = 1.0, long_video: bool = False, window_overlap: int = 0,
                 cache_threshold: float = 0.0) -> SamplingPlan:
    """The sampler node's widgets as the engine's plan, on the MODEL's scheduler config (`strength`
    is the node's denoise input)."""
    return SamplingPlan(model.model.scheduler_config, scheduler=scheduler, steps=steps, strength=strength, seed=seed,
                        guidance_scale=cfg, use_dynamic_cfg=use_dynamic_cfg, long_video=long_video,
                        window_overlap=window_overlap, cache_threshold=cache_threshold)


def sample_latent(model, positive, negative, latent: dict, plan: SamplingPlan, fps=None, prompt_schedule=None,
                  node: str = "DropletVideo Sampler") -> dict:
    """The sampler node's work (DropletVideoSampler, DropletVideoFPSSweep): a LATENT. `fps`
    overrides the conditioning's FPS (the sweep); `prompt_schedule` gives the windows their prompts."""
    refuse_in_own_sampler(model)
    base, device = model.model, model.load_device
    config = base.droplet_config
    transformer_options = check_patches(model)
    scale = latent_scale(node, base, positive, latent)
    inputs = sampler_inputs(base, positive, negative, latent, plan, device, scale, fps, prompt_schedule)
    if plan.step_count() == 0:  # denoise 0: the input, unchanged (as the engine)
        return latent
    latent_size = latent["samples"].shape[2:]
    dtype = base.manual_cast_dtype or base.get_dtype()

    window = min(latent_size[0], config.latent_frames) if plan.long_video else latent_size[0]
    shape = [1 + plan.uses_cfg, config.noise_channels, window, *latent_size[1:]]
    memory = base.memory_required(shape, {"c_crossattn": [inputs.positive.shape]})
    comfy.model_management.load_models_gpu([model], memory_required=memory)
    latents = sample(EngineView(base.diffusion_model, transformer_options), plan, inputs, latent_size, device, dtype,
                     on_step=comfy_on_step(plan.step_count(), engine_preview(latent, scale)))
    return comfy_latent(latents, scale, preview_of(latent))


class DropletVideoSampler:
    DESCRIPTION = ("Generates video latents on the DropletVideo MODEL with the official pipeline's own loop (its "
                   "DDIM, [negative, positive] guidance, the FPS condition at every step). With a video latent and "
                   "denoise < 1 it re-generates that video (video-to-video). long_video renders past the model's "
                   "trained length in sliding windows; cache_threshold skips near-repeat steps. Core KSampler also "
                   "runs this MODEL, less close to the reference (docs/core_ksampler.md).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Video latents [batch, channels, frames, height, width], unscaled (ComfyUI's convention), "
                       "for DropletVideo VAE Decode.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "From a DropletVideo loader (LoRAs and core model patches may sit "
                                    "in between)."}),
                "positive": ("CONDITIONING", {"tooltip": "From DropletVideo Image Encode or Empty Conditioning "
                                              "(they carry the image and the FPS)."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt from the same node (used when "
                                              "cfg > 1)."}),
                "latent": ("LATENT", {"tooltip": "The video latent to start from: the conditioning node's (its size "
                                      "sets the video's), or DropletVideo VAE Encode's for video-to-video."}),
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
                                      "from noise; below 1 re-generates the latent input (video-to-video strength)."}),
            },
            "optional": {
                "long_video": ("BOOLEAN", {"default": False, "tooltip": "Sliding temporal windows: more frames "
                               "than the model was trained for (its positional table), blended over the overlap."}),
                "window_overlap": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With long_video: latent "
                                   "frames shared by neighbouring windows (1 latent frame = 4 frames); 0 = half a "
                                   "window."}),
                "cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "TeaCache-style step skipping: reuse the last step's transformer output while "
                                    "its input changes less than this in total. 0 = off; try 0.05-0.2. With long_video "
                                    "each window keeps its own history."}),
                "prompt_schedule": ("DROPLET_PROMPT_SCHEDULE", {"tooltip": "With long_video: a prompt per window "
                                    "(DropletVideo Prompt Schedule) in place of positive's text; positive still gives "
                                    "the FPS and the image."}),
            },
        }

    def sample(self, model, positive, negative, latent, steps, cfg, seed, scheduler, use_dynamic_cfg, denoise,
               long_video=None, window_overlap=None, cache_threshold=None, prompt_schedule=None):
        plan = sampler_plan(model, steps, cfg, seed, scheduler, use_dynamic_cfg, denoise, bool(long_video),
                            window_overlap or 0, cache_threshold or 0.0)
        return (sample_latent(model, positive, negative, latent, plan, prompt_schedule=prompt_schedule),)
