"""Rough working-memory estimates (bytes) passed to load_models_gpu, so ComfyUI frees enough
device memory before a node computes. They only need to be in the right range."""

import torch

from ..droplet_core.configs import TransformerConfig
from ..droplet_core.offload_plan import activation_bytes

# Activations per token and hidden unit in a T5 encoder block (the XXL feed-forward is 2.5x
# wider than the model).
TEXT_ACTIVATIONS = 64
# ComfyUI's estimates for its CogVideoX VAE (comfy/sd.py, chunked variant): per output pixel.
VAE_DECODE_PER_PIXEL = 2800
VAE_ENCODE_PER_PIXEL = 1400
VAE_DECODE_FRAMES = 8  # diffusers decodes 2 latent frames (8 video frames) at a time
VAE_ENCODE_FRAMES = 9  # the reference encodes 4 frames at a time (first chunk 5)
TILE = (480, 720)  # rough pixel size of diffusers' CogVideoX tile plus overlap


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def transformer_memory(config: TransformerConfig, latent_shape, text_tokens: int, batch: int,
                       dtype: torch.dtype) -> int:
    """The offload planner's estimate (droplet_core/offload_plan.py), for the same latent grid."""
    frames, height, width = latent_shape
    tokens = text_tokens + frames * (height // config.patch_size) * (width // config.patch_size)
    return activation_bytes(config, tokens, batch, _size(dtype))


def _pixels(frames: int, height: int, width: int, tiled: bool) -> int:
    if tiled:
        height, width = min(height, TILE[0]), min(width, TILE[1])
    return frames * height * width


def vae_decode_memory(latent_frames: int, height: int, width: int, dtype: torch.dtype, tiled: bool) -> int:
    frames = min(VAE_DECODE_FRAMES, max(2, (latent_frames - 1) * 4 + 1))
    return VAE_DECODE_PER_PIXEL * _pixels(frames, height, width, tiled) * _size(dtype)


def vae_encode_memory(frames: int, height: int, width: int, dtype: torch.dtype, tiled: bool) -> int:
    return VAE_ENCODE_PER_PIXEL * _pixels(min(VAE_ENCODE_FRAMES, frames), height, width, tiled) * _size(dtype)


def text_memory(tokens: int, hidden: int, dtype: torch.dtype) -> int:
    return tokens * hidden * TEXT_ACTIVATIONS * _size(dtype)
