"""Building the native MODEL: a ModelPatcher around DropletVideoModel, weights assigned from the
memory-mapped safetensors (no second copy when the file already has the weight dtype)."""

import comfy.model_management
import comfy.model_patcher
import torch

from ...droplet_core.configs import config_to_dict
from ...droplet_core.loading import assign_strict, read_transformer
from .model import DropletVideoLatentFormat, DropletVideoModelConfig

FP8 = torch.float8_e4m3fn


def model_config_for(transformer_config, weight_dtype, compute_dtype, scale_factor: float):
    config = DropletVideoModelConfig({"image_model": "dropletvideo",
                                      "droplet_config": config_to_dict(transformer_config, "DropletVideoTransformer3DModel")})
    config.latent_format = DropletVideoLatentFormat(scale_factor)
    config.set_inference_dtype(weight_dtype, None if weight_dtype == compute_dtype else compute_dtype)
    return config


def load_native_model(path, compute_dtype: torch.dtype, scale_factor: float, fp8_weights: bool = False,
                      config_overrides=None):
    """The transformer at `path` (folder or single file) as a ComfyUI MODEL.

    fp8_weights stores every weight in float8_e4m3fn and computes in `compute_dtype` (ComfyUI's
    manual cast, as its own fp8 weight dtype); ComfyUI-style scaled fp8 files are dequantized."""
    weight_dtype = FP8 if fp8_weights else compute_dtype
    config, state, _, source = read_transformer(path, compute_dtype, config_overrides)
    if fp8_weights:
        state = {key: value.to(FP8) for key, value in state.items()}
    model_config = model_config_for(config, weight_dtype, compute_dtype, scale_factor)
    offload = comfy.model_management.unet_offload_device()
    model = model_config.get_model(device=offload)
    assign_strict(model.diffusion_model, state, source)
    model.diffusion_model.init_buffers(device=offload, dtype=compute_dtype)
    model.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)
