"""Building the native MODEL: a ModelPatcher around DropletVideoModel, weights assigned from the
memory-mapped safetensors (no second copy when the file already has the weight dtype); ComfyUI's
quantized files load through ComfyUI's quantized layers instead (quantized.py)."""

import logging

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ...droplet_core.configs import config_to_dict
from ...droplet_core.loading import (assign_strict, fit_to_config, read_transformer_state,
                                     transformer_config_and_files)
from ...droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG
from ..latent_scale import ModelScale
from ..quantized_file import check_quantized_file
from .model import DropletVideoLatentFormat, DropletVideoModelConfig, model_sampling_settings
from .quantized import keeps_quantized, load_quantized, read_quantized

FP8 = torch.float8_e4m3fn
logger = logging.getLogger(__name__)


def model_config_for(transformer_config, weight_dtype, compute_dtype, scale: ModelScale,
                     scheduler_config: dict = COGVIDEOX_SCHEDULER_CONFIG):
    config = DropletVideoModelConfig({"image_model": "dropletvideo",
                                      "droplet_config": config_to_dict(transformer_config)})
    config.latent_format = DropletVideoLatentFormat(scale)
    config.sampling_settings = model_sampling_settings(scheduler_config)
    config.set_inference_dtype(weight_dtype, None if weight_dtype == compute_dtype else compute_dtype)
    return config


def load_native_model(path, compute_dtype: torch.dtype, scale: ModelScale, fp8_weights: bool = False,
                      config_overrides=None, scheduler_config: dict = COGVIDEOX_SCHEDULER_CONFIG):
    """The transformer at `path` (folder or single file) as a ComfyUI MODEL.

    `scale` is the VAE scaling_factor the latent format scales by, and where the loader read it.
    `scheduler_config` is the one source of the sampling schedule: ComfyUI's model sampling
    (core samplers) is built from it, and the model keeps it as `scheduler_config` for the
    DropletVideo Sampler's DDIM.

    fp8_weights stores every weight in float8_e4m3fn and computes in `compute_dtype` (ComfyUI's
    manual cast, as its own fp8 weight dtype). ComfyUI's scaled fp8 and mixed-precision files keep
    their quantized layers whatever fp8_weights says (on ComfyUI 0.4.0+; quantized.py)."""
    config, files, source = transformer_config_and_files(path, config_overrides)
    if keeps_quantized(files, source):
        if fp8_weights:
            logger.info("%s is already quantized: its own format is kept (weight_format fp8_e4m3fn is not "
                        "applied on top).", source)
        return _quantized_model(config, files, source, compute_dtype, scale, scheduler_config)
    weight_dtype = FP8 if fp8_weights else compute_dtype
    state, _ = read_transformer_state(config, files, source, compute_dtype)
    if fp8_weights:
        state = {key: value.to(FP8) for key, value in state.items()}
    model_config = model_config_for(config, weight_dtype, compute_dtype, scale, scheduler_config)
    offload = comfy.model_management.unet_offload_device()
    model = model_config.get_model(device=offload)
    assign_strict(model.diffusion_model, state, source)
    return _patcher(model, offload, compute_dtype, scheduler_config)


def _quantized_model(config, files, source, compute_dtype, scale, scheduler_config):
    """As core's load_diffusion_model_state_dict: convert_old_quants (read_quantized), quant_config
    from detect_layer_quantization, manual cast always on (the weights' dtypes are mixed), weights
    through the layers' own loading. The compute dtype is the node's precision, as for every other
    file (core picks it from the device: unet_manual_cast(None, ...))."""
    check_quantized_file(config, files, source, config.kind.label)  # from the header: refused before anything is read
    state = read_quantized(files, compute_dtype)
    fit_to_config(config, state, files, source)
    model_config = model_config_for(config, compute_dtype, compute_dtype, scale, scheduler_config)
    model_config.quant_config = comfy.utils.detect_layer_quantization(state, "")
    model_config.set_inference_dtype(compute_dtype, compute_dtype)
    offload = comfy.model_management.unet_offload_device()
    model = model_config.get_model(device=offload)
    load_quantized(model.diffusion_model, config, state, source)
    return _patcher(model, offload, compute_dtype, scheduler_config)


def _patcher(model, offload, compute_dtype, scheduler_config):
    model.scheduler_config = dict(scheduler_config)
    model.diffusion_model.init_buffers(device=offload, dtype=compute_dtype)
    model.diffusion_model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)
