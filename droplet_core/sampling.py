"""Schedulers and the denoising loop (CFG as [negative, positive], FPS every step).

`sample_plan.sample` is the entry point that sets a run up and calls the loop."""

import inspect
import math
from typing import Callable, Optional

import torch
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, UniPCMultistepScheduler)

from .transformer import run_block

# "ddim" is what inference.py uses: diffusers' plain DDIMScheduler on the released config.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "cogvideox_ddim": (CogVideoXDDIMScheduler, {}),
    "cogvideox_dpm": (CogVideoXDPMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}

# The DDIM config CogVideoX-5B-class checkpoints ship in scheduler/ (v-prediction, zero terminal
# SNR, trailing spacing), NOT read from DropletVideo's release, whose file nobody here has: the
# fallback for a transformer loaded without any scheduler_config.json (loading.py logs it).
COGVIDEOX_SCHEDULER_CONFIG = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "clip_sample_range": 1.0, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True, "sample_max_value": 1.0, "set_alpha_to_one": True, "snr_shift_scale": 1.0,
    "steps_offset": 0, "timestep_spacing": "trailing", "trained_betas": None}

# on_step(step_index, total_steps, latents) -> None; raising from it aborts the run.
StepCallback = Callable[[int, int, torch.Tensor], None]


def make_scheduler(scheduler_config: dict, name: str = "ddim"):
    """A scheduler built on the checkpoint's config (v-prediction, zero-SNR, trailing kept)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}.")
    cls, extra = SCHEDULERS[name]
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in scheduler_config.items() if k in accepted}  # e.g. snr_shift_scale: DDIM has none
    return cls.from_config({**config, **extra})


def timesteps_for(scheduler, steps: int, strength: float = 1.0, device=None):
    """The schedule, cut as img2img does for strength < 1 (start at step N - int(N*strength))."""
    if steps < 1:
        raise ValueError(f"steps {steps} must be at least 1 (default 50).")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength/denoise {strength} must be within 0..1 (1 = generate from pure noise).")
    scheduler.set_timesteps(steps, device=device)
    init = min(int(steps * strength), steps)
    start = max(steps - init, 0)
    return scheduler.timesteps[start * scheduler.order:]


def start_latents(scheduler, timesteps, noise: torch.Tensor, video_latents: Optional[torch.Tensor] = None):
    """Pure noise x init_noise_sigma, or (V2V) the video latents noised to the first timestep;
    with no timestep left (strength 0) the video latents themselves."""
    if video_latents is None:
        return noise * scheduler.init_noise_sigma
    if len(timesteps) == 0:
        return video_latents
    return scheduler.add_noise(video_latents, noise, timesteps[:1])


def dynamic_guidance(guidance: float, steps: int, timestep: float) -> float:
    """The reference's dynamic CFG. It uses the timestep value (0..999), not the step index,
    in ((N - t) / N) ** 5: reproduced as written."""
    return 1 + guidance * ((1 - math.cos(math.pi * ((steps - timestep) / steps) ** 5.0)) / 2)


def check_finite(latents: torch.Tensor, step: int, total: int) -> None:
    """Stops a run whose latents turned NaN/inf (they decode to a black video): one reduction and
    one sync per step, nothing next to a transformer forward."""
    if not bool(torch.isfinite(latents).all()):
        raise ValueError(f"sampling step {step + 1} of {total} produced NaN/inf latents. Usual causes: fp16 "
                         f"overflow (use bf16 or fp32), a damaged LoRA or model file, or an extreme cfg.")


@torch.no_grad()
def denoising_loop(transformer, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, *, positive: torch.Tensor,
                   negative: Optional[torch.Tensor], inpaint: Optional[torch.Tensor], fps: torch.Tensor,
                   guidance_scale: float = 6.0, use_dynamic_cfg: bool = False, generator=None,
                   on_step: Optional[StepCallback] = None, block_runner=run_block) -> torch.Tensor:
    """Runs the schedule from `latents` ([1, F, 16, h, w]) and returns the final latents
    (sample_plan.sample sets it up; tests call it with fake models).

    `positive`/`negative` are text embeddings [1, T, D]; `inpaint` is [1, F, 17, h, w] or None.
    Guidance > 1 batches [negative, positive] as the reference does; the prediction is fp32.
    """
    dtype = latents.dtype
    use_cfg = guidance_scale > 1.0
    if use_cfg and negative is None:
        raise ValueError("guidance_scale > 1 needs a negative prompt embedding (use '' for an empty one).")
    text = torch.cat([negative, positive]) if use_cfg else positive
    inpaint = torch.cat([inpaint] * 2) if (use_cfg and inpaint is not None) else inpaint
    device = latents.device
    fps = fps.to(device)
    rotary = transformer.rotary(latents.shape[1], latents.shape[3], latents.shape[4], device)
    steps = len(timesteps)
    extra = {"eta": 0.0, "generator": generator} if isinstance(scheduler, (DDIMScheduler, CogVideoXDDIMScheduler,
                                                                             CogVideoXDPMScheduler)) else {}
    old_pred_original = None
    guidance = guidance_scale

    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        prediction = transformer(model_input, text, t.expand(model_input.shape[0]), fps, inpaint_latents=inpaint,
                                 image_rotary_emb=rotary, block_runner=block_runner).float()
        if use_dynamic_cfg:
            guidance = dynamic_guidance(guidance_scale, steps, t.item())
        if use_cfg:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance * (cond - uncond)

        if isinstance(scheduler, CogVideoXDPMScheduler):
            latents, old_pred_original = scheduler.step(prediction, old_pred_original, t,
                                                        timesteps[i - 1] if i > 0 else None, latents,
                                                        **extra, return_dict=False)
        else:
            latents = scheduler.step(prediction, t, latents, **extra, return_dict=False)[0]
        latents = latents.to(dtype)
        check_finite(latents, i, steps)
        if on_step is not None:
            on_step(i, steps, latents)
    return latents
