"""One sampling run, from one entry point: `sample(transformer, plan, inputs, ...)`.

The engine's pipeline, the ComfyUI sampler nodes and the multi-GPU worker all call `sample` with
keywords. It owns what every caller used to set up on its own: the scheduler and its timesteps,
the seed's generators, the noise shape, the V2V start latents, the step cache, the long-video
windows and their prompt schedule, and a continuation's known latent frames. A new sampling option
is a field of `SamplingPlan` and a line here.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .long_video import SlidingWindowTransformer, window_count
from .prompt_schedule import window_prompts
from .sampling import StepCallback, denoising_loop, make_scheduler, start_latents, timesteps_for
from .step_cache import StepCache
from .transformer import run_block


@dataclass
class SamplingPlan:
    """The settings of one run; defaults are the reference CLI's (inference.py)."""

    scheduler_config: dict
    scheduler: str = "ddim"
    steps: int = 50
    strength: float = 1.0  # 1 = from noise; < 1 re-generates the start video (ComfyUI's "denoise" input)
    seed: int = 42
    guidance_scale: float = 6.0
    use_dynamic_cfg: bool = False
    long_video: bool = False  # sliding windows past the positional table (long_video.py)
    window_overlap: int = 0  # latent frames shared by neighbouring windows (0 = half a window)
    cache_threshold: float = 0.0  # step cache (step_cache.py); 0 = off

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def step_count(self) -> int:
        """The steps that will run: `steps`, fewer for strength < 1, 0 for strength 0."""
        return len(timesteps_for(make_scheduler(self.scheduler_config, self.scheduler), self.steps, self.strength))


@dataclass
class SampleInputs:
    """The conditions of one run, in the engine's layout [1, F, C, h, w]."""

    positive: torch.Tensor  # text embeddings [1, T, D]
    fps: torch.Tensor  # the FPS condition, [1]
    negative: Optional[torch.Tensor] = None  # needed when guidance_scale > 1
    inpaint: Optional[torch.Tensor] = None  # the 17 mask + masked-video channels, [1, F, 17, h, w]
    start_video: Optional[torch.Tensor] = None  # V2V: the latents noised to the first timestep (strength < 1)
    # Long video: one text embedding [1, T, D] per prompt of a schedule (prompt_schedule.py), in place of positive.
    prompt_schedule: Optional[List[torch.Tensor]] = None
    # Continuation (continuation.py): latent frames 0..n-1 are known; the final latents take the
    # inpaint channels' clean latents there, so the overlap decodes as the VAE round trip of the
    # previous frames (the model's own version of them is dropped with them anyway).
    known_latent_frames: int = 0


def noise_shape(config, latent_size: Sequence[int]) -> Tuple[int, ...]:
    """[1, F, C, h, w] for latent_size (F, h, w)."""
    frames, height, width = latent_size
    return 1, frames, config.noise_channels, height, width


def initial_noise(shape, seed: int, device, dtype) -> torch.Tensor:
    """Quirk 8: randn from a generator on the run device (a CUDA run differs from a CPU run)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def window_texts(config, plan: SamplingPlan, inputs: SampleInputs, frames: int, cast) -> Optional[list]:
    """Each window's text batch ([negative, prompt] with CFG) for a prompt schedule, or None
    (no schedule, or no windows: then the schedule's one prompt is the positive)."""
    schedule = inputs.prompt_schedule
    if not schedule:
        return None
    windows = window_count(frames, config.latent_frames, plan.window_overlap) if plan.long_video else 1
    if not plan.long_video:
        window_prompts(len(schedule), windows)  # refuses several prompts without windows
        return None
    texts = [cast(torch.cat([inputs.negative, p]) if plan.uses_cfg else p) for p in schedule]
    return [texts[i] for i in window_prompts(len(schedule), windows)]


def windowed(transformer, plan: SamplingPlan, cache: Optional[StepCache], texts: Optional[list] = None):
    """The model the loop calls: the transformer, or its sliding windows for a long video."""
    if not plan.long_video:
        return transformer
    return SlidingWindowTransformer(transformer, overlap=plan.window_overlap,
                                    on_window=cache.select_window if cache else None, window_text=texts)


def paste_known(latents: torch.Tensor, inputs: SampleInputs) -> torch.Tensor:
    """The continuation's known latent frames put back from the inpaint channels (mask first)."""
    known = inputs.known_latent_frames
    if not known:
        return latents
    latents = latents.clone()
    latents[:, :known] = inputs.inpaint[:, :known, 1:].to(latents.device, latents.dtype)
    return latents


def sample(transformer, plan: SamplingPlan, inputs: SampleInputs, latent_size: Sequence[int], device, dtype,
           on_step: Optional[StepCallback] = None,
           wrap_model: Callable = lambda model: model,
           wrap_block_runner: Callable = lambda runner: runner) -> torch.Tensor:
    """The final latents [1, F, C, h, w] of one run on `transformer` (the engine's call signature:
    the engine model, or the native model's EngineView).

    `latent_size` is (F, h, w). `wrap_model` puts a split around the model the loop calls (CFG
    parallel); `wrap_block_runner` wraps the per-block runner (offload placement). With no step left
    (strength 0) the start video comes back unchanged.
    """
    scheduler = make_scheduler(plan.scheduler_config, plan.scheduler)
    timesteps = timesteps_for(scheduler, plan.steps, plan.strength, device)
    noise = initial_noise(noise_shape(transformer.config, latent_size), plan.seed, device, dtype)
    video = inputs.start_video.to(device, dtype) if inputs.start_video is not None and plan.strength < 1 else None
    latents = start_latents(scheduler, timesteps, noise, video)
    if len(timesteps) == 0:
        return latents

    cache = StepCache(plan.cache_threshold, transformer.config.num_layers) if plan.cache_threshold > 0 else None
    cast = lambda x: None if x is None else x.to(device, dtype)  # noqa: E731
    texts = window_texts(transformer.config, plan, inputs, latent_size[0], cast)
    positive = inputs.prompt_schedule[0] if inputs.prompt_schedule else inputs.positive
    latents = denoising_loop(
        wrap_model(windowed(transformer, plan, cache, texts)), scheduler, latents, timesteps,
        positive=cast(positive), negative=cast(inputs.negative) if plan.uses_cfg else None,
        inpaint=cast(inputs.inpaint), fps=inputs.fps, guidance_scale=plan.guidance_scale,
        use_dynamic_cfg=plan.use_dynamic_cfg, generator=torch.Generator(device=device).manual_seed(plan.seed),
        on_step=on_step, block_runner=wrap_block_runner(cache or run_block))
    return paste_known(latents, inputs)
