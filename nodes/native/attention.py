"""Attention inside ComfyUI: the native model's blocks call ComfyUI's attention functions
(comfy.ldm.modules.attention) as core's own models do, with each call's transformer_options,
so ComfyUI's launch flags (--use-sage-attention, --use-flash-attention, ...), core *Model
Attention Backend* and any `transformer_options["optimized_attention_override"]` apply.

The loaders' `attention` input picks the function:
- comfy: ComfyUI's `optimized_attention`, what its launch flags chose (the default);
- sdpa: ComfyUI's PyTorch attention (scaled_dot_product_attention, the reference's kernel);
- sage: ComfyUI's SageAttention (needs `sageattention` installed).
An attention override on the MODEL wraps whichever of them runs.
"""

import logging

import comfy.ldm.modules.attention as comfy_attention

from ...droplet_core.attention import ATTENTION_BACKENDS, AttentionFn, attention_kernel, kernel_attention

COMFY_ATTENTION = ("comfy", *ATTENTION_BACKENDS)
REGISTERED_NAMES = {"sdpa": "pytorch", "sage": "sage"}  # ComfyUI's names (get_attention_function)
logger = logging.getLogger(__name__)


def check_attention(choice: str) -> None:
    """Refuses an unknown choice, or sage without `sageattention`, before the slow loading."""
    if choice not in COMFY_ATTENTION:
        raise ValueError(f"unknown attention {choice!r}: use one of {', '.join(COMFY_ATTENTION)}.")
    if choice != "comfy":
        attention_kernel(choice)


def comfy_function(choice: str):
    """ComfyUI's attention function for `choice`, or None where this ComfyUI has no registry of them
    (before transformer_options reached attention)."""
    if choice == "comfy":
        return comfy_attention.optimized_attention
    registered = getattr(comfy_attention, "get_attention_function", None)
    return registered(REGISTERED_NAMES[choice], None) if registered is not None else None


def comfy_attention_fn(choice: str = "comfy") -> AttentionFn:
    """The blocks' attention function for the loader's `attention` choice: q, k, v in [B, heads,
    tokens, head_dim] through ComfyUI's function (skip_reshape, as core's Wan), with the call's
    transformer_options where this ComfyUI's attention takes them (it has wrap_attn)."""
    check_attention(choice)
    function = comfy_function(choice)
    if function is None:
        logger.warning("This ComfyUI has no attention function %r: DropletVideo uses its own %s kernel, and "
                       "attention overrides do not reach it.", REGISTERED_NAMES[choice], choice)
        return kernel_attention(choice)
    takes_options = hasattr(comfy_attention, "wrap_attn")

    def attend(query, key, value, transformer_options=None):
        extra = {"transformer_options": transformer_options} if takes_options and transformer_options else {}
        return function(query, key, value, query.shape[1], skip_reshape=True, **extra)

    return attend
