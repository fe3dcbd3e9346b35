"""Working-memory estimates (bytes) passed to load_models_gpu, so ComfyUI frees enough device
memory before a node computes: the offload planner's (droplet_core/offload/plan.py), which
bench/vram_trace.py checks against a trace of the release model, one estimate per quantity."""

import torch

from ..droplet_core import shapes
from ..droplet_core.configs import TransformerConfig
from ..droplet_core.offload.plan import Workload, activation_bytes, vae_decode_bytes, vae_encode_bytes

# Activations per token and hidden unit in a T5 encoder block (the XXL feed-forward is 2.5x
# wider than the model).
TEXT_ACTIVATIONS = 64


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def transformer_memory(config: TransformerConfig, latent_shape, text_tokens: int, batch: int,
                       dtype: torch.dtype) -> int:
    """The offload planner's estimate (droplet_core/offload/plan.py), for the same latent grid."""
    frames, height, width = latent_shape
    tokens = text_tokens + frames * (height // config.patch_size) * (width // config.patch_size)
    return activation_bytes(config, tokens, batch, _size(dtype))


def vae_decode_memory(latent_frames: int, height: int, width: int, dtype: torch.dtype, tiled: bool) -> int:
    return vae_decode_bytes(Workload(width=width, height=height, frames=shapes.video_frames(latent_frames), act_bytes=_size(dtype),
                                     tiled_vae=tiled))


def vae_encode_memory(frames: int, height: int, width: int, dtype: torch.dtype, tiled: bool) -> int:
    return vae_encode_bytes(Workload(width=width, height=height, frames=frames, act_bytes=_size(dtype),
                                     tiled_vae=tiled))


def text_memory(tokens: int, hidden: int, dtype: torch.dtype) -> int:
    return tokens * hidden * TEXT_ACTIVATIONS * _size(dtype)
