"""The VAE and T5 behind the DROPLET_VAE and DROPLET_TEXT_ENCODER sockets, and how they are
handed to ComfyUI's model management. (The transformer is a native ComfyUI MODEL: native/.)

Each sits in a `comfy.model_patcher.ModelPatcher` on ComfyUI's devices for its kind (VAE:
vae_device / vae_offload_device, so --cpu-vae holds; T5: text_encoder_device /
text_encoder_offload_device). A node asks `load_for_compute` for the module, which calls
`comfy.model_management.load_models_gpu`; ComfyUI unloads and frees them as it does its own.
"""

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import torch

from ..droplet_core.text import TextEncoder


class ComponentHolder(torch.nn.Module):
    """ModelPatcher writes `.device` on the module it manages; diffusers and transformers models
    have a read-only `device` property, so each model is held in this plain module."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


def make_patcher(module: torch.nn.Module, load_device, offload_device):
    return comfy.model_patcher.ModelPatcher(ComponentHolder(module.to(offload_device)), load_device=load_device,
                                            offload_device=offload_device)


def vae_patcher(module: torch.nn.Module):
    mm = comfy.model_management
    return make_patcher(module, mm.vae_device(), mm.vae_offload_device())


def text_encoder_patcher(module: torch.nn.Module, on_cpu: bool):
    mm = comfy.model_management
    if on_cpu:
        return make_patcher(module, torch.device("cpu"), torch.device("cpu"))
    return make_patcher(module, mm.text_encoder_device(), mm.text_encoder_offload_device())


def load_for_compute(patcher, memory_required: int) -> torch.nn.Module:
    """The patcher's module, on patcher.load_device.

    force_full_load: the VAE and T5 are plain torch modules without ComfyUI's cast-on-the-fly
    layers, so a partial load would leave some of their weights on the offload device. Both are
    small next to the transformer, which ComfyUI does load partially.
    """
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    return patcher.model.module


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


@dataclass(frozen=True, eq=False)
class DropletVae:
    """DROPLET_VAE: the CogVideoX-family causal 3D VAE (diffusers AutoencoderKLCogVideoX)."""

    patcher: object
    source: str

    @property
    def scaling_factor(self) -> float:
        return self.patcher.model.module.config.scaling_factor


@dataclass(frozen=True, eq=False)
class DropletTextEncoder:
    """DROPLET_TEXT_ENCODER: transformers' T5 encoder and its tokenizer."""

    patcher: object
    tokenizer: object
    source: str

    def on_device(self, memory_required: int) -> TextEncoder:
        return TextEncoder(self.tokenizer, load_for_compute(self.patcher, memory_required))
