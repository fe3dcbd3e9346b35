"""The sampler's on_step callback for ComfyUI: progress bar and cancellation."""

import comfy.model_management
import comfy.utils

from ..droplet_core.sampling import StepCallback


def comfy_on_step(steps: int) -> StepCallback:
    """Advances a ComfyUI ProgressBar by one per step; raises InterruptProcessingException when
    the user pressed Cancel (checked after every step)."""
    bar = comfy.utils.ProgressBar(steps)

    def on_step(index: int, total: int, latents) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(index + 1, total)

    return on_step
