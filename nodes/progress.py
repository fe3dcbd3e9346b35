"""The sampler's on_step callback for ComfyUI: progress bar, latent preview and cancellation."""

from typing import Optional

import comfy.model_management
import comfy.utils
from comfy.cli_args import LatentPreviewMethod, args
from PIL import Image

from ..droplet_core.preview import Projection, latents_to_rgb
from ..droplet_core.sampling import StepCallback


def previews_enabled() -> bool:
    """ComfyUI's preview setting (--preview-method, or the frontend's per-run choice). TAESD has no
    video decoder for this VAE, so every method but 'none' gets the linear preview."""
    return args.preview_method != LatentPreviewMethod.NoPreviews


def preview_image(latents, projection: Projection):
    """The middle frame of [1, F, C, h, w] latents, in the (format, image, max size) ProgressBar takes."""
    frame = latents[0, latents.shape[1] // 2]
    return "JPEG", Image.fromarray(latents_to_rgb(frame, projection).numpy()), getattr(args, "preview_size", 512)


def comfy_on_step(steps: int, projection: Optional[Projection] = None) -> StepCallback:
    """Advances a ComfyUI ProgressBar by one per step, with a preview picture when ComfyUI's
    preview method asks for one and a projection was fitted (image-to-video); raises
    InterruptProcessingException when the user pressed Cancel (checked after every step)."""
    bar = comfy.utils.ProgressBar(steps)
    show = projection is not None and previews_enabled()

    def on_step(index: int, total: int, latents) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(index + 1, total, preview_image(latents, projection) if show else None)

    return on_step
