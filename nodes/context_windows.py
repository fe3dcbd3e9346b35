"""ComfyUI's own context windows on the DropletVideo MODEL: what core's nodes set on it, and whether
their windows fit the model's positional table.

Core *Context Windows (Manual)* (and its WAN / LTXV forms; comfy_extras/nodes_context_windows.py,
ComfyUI 0.8.0 of January 2026 and 0.33) clones the MODEL and sets
model_options["context_handler"] to a comfy.context_windows.IndexListContextHandler. Core samplers
(KSampler, SamplerCustomAdvanced) then call the model once per window of `context_length` frames
along `dim`, slice the conditions that are one frame long per latent frame (c_concat: our mask and
masked-video latents) with it, and pass the others (fps) unchanged. On 0.33 `causal_window_fix`
(on by default) gives every window after the first the frame before it as well: the model sees
context_length + 1 latent frames. The DropletVideo Sampler calls the transformer itself, so the
handler would not run there: it has its own sliding windows (long_video).
"""

from ..droplet_core.positional import check_frames_fit

HANDLER = "context_handler"  # the model_options key core's context-window nodes set
FRAME_DIM = 2  # the frame axis of a video LATENT [B, C, F, H, W]
NODE = "Context Windows (Manual)"


def context_handler(model):
    """The context-window handler a core node put on this MODEL (ModelPatcher), or None."""
    return model.model_options.get(HANDLER)


def longest_window(handler) -> int:
    """Latent frames in the longest call the handler makes: context_length, plus the frame before
    the window that causal_window_fix (ComfyUI 0.33) adds."""
    return handler.context_length + int(bool(getattr(handler, "causal_window_fix", False)))


def table_remedy(config) -> str:
    """How core samplers render past the table: the remedy part of the refusal."""
    return (f"or put core {NODE} on the MODEL (dim {FRAME_DIM}, context_length at most "
            f"{config.latent_frames - 1} latent frames: ComfyUI 0.33's causal_window_fix adds one) and sample "
            f"with KSampler")


def check_windows_fit(handler, config) -> None:
    """Refuses context windows that would still give the model more frames than its table, or that
    cut along another axis than the frames."""
    if handler.dim != FRAME_DIM:
        raise ValueError(f"the MODEL's context windows ({NODE}) cut along dim {handler.dim}; DropletVideo's "
                         f"frames are dim {FRAME_DIM} of its latent [batch, channels, frames, height, width]: set "
                         f"dim to {FRAME_DIM}.")
    window = longest_window(handler)
    added = window - handler.context_length
    if not config.use_rotary_positional_embeddings and window > config.latent_frames:
        fix = " (context_length + the causal_window_fix frame)" if added else ""
        raise ValueError(f"the MODEL's context windows give the model {window} latent frames{fix}, more than its "
                         f"positional table's {config.latent_frames} ({config.max_video_frames} video frames): set "
                         f"{NODE}'s context_length to at most {config.latent_frames - added}.")


def check_model_frames(model, frames: int, remedy: str) -> None:
    """Image Encode's early check of a video of `frames` frames against the MODEL: it fits the
    positional table, or the MODEL carries context windows that cut it into windows that fit."""
    config = model.model.droplet_config
    handler = context_handler(model)
    try:
        check_frames_fit(config, frames, remedy=remedy)
    except ValueError:
        if handler is None:
            raise
        check_windows_fit(handler, config)


def refuse_in_own_sampler(model) -> None:
    """The DropletVideo Sampler cannot run core's context handler: say so instead of dropping it."""
    if context_handler(model) is not None:
        raise ValueError(f"the MODEL carries core context windows ({NODE}), which run inside core samplers: "
                         f"sample it with KSampler (or SamplerCustomAdvanced), or take {NODE} out and use this "
                         f"sampler's long_video for long videos.")
