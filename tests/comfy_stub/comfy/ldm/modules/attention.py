"""Stand-in for comfy.ldm.modules.attention (ComfyUI 0.33): the attention functions models call
with `transformer_options`, and `wrap_attn`, which hands a call to
transformer_options["optimized_attention_override"] (set by ModelPatcher.set_model_optimized_attention,
e.g. core Model Attention Backend) as `override(function, *args, **kwargs)`, once per call.
`optimized_attention` is PyTorch attention (what 0.33 picks on NVIDIA GPUs); the registry has
"pytorch" and, when the package imports, "sage"."""

import functools
import importlib
import importlib.util

import torch

REGISTERED_ATTENTION_FUNCTIONS = {}


def register_attention_function(name, func):
    REGISTERED_ATTENTION_FUNCTIONS.setdefault(name, func)


def get_attention_function(name, default=...):
    if name == "optimized":
        return optimized_attention
    if name not in REGISTERED_ATTENTION_FUNCTIONS:
        if default is ...:
            raise KeyError(f"Attention function {name} not found.")
        return default
    return REGISTERED_ATTENTION_FUNCTIONS[name]


def wrap_attn(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "_inside_attn_wrapper" in kwargs:
            return func(*args, **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        override = (kwargs.get("transformer_options") or {}).get("optimized_attention_override")
        if override is not None:
            return override(func, *args, **kwargs)
        return func(*args, **kwargs)
    return wrapper


def _to_heads(q, k, v, heads, skip_reshape):
    if skip_reshape:
        return q, k, v
    b, _, inner = q.shape
    return tuple(t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))


@wrap_attn
def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs):
    q, k, v = _to_heads(q, k, v, heads, skip_reshape)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])


@wrap_attn
def attention_sage(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                   **kwargs):
    q, k, v = _to_heads(q, k, v, heads, skip_reshape)
    out = importlib.import_module("sageattention").sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])


optimized_attention = attention_pytorch
optimized_attention_masked = optimized_attention

register_attention_function("pytorch", attention_pytorch)
if importlib.util.find_spec("sageattention") is not None:
    register_attention_function("sage", attention_sage)
