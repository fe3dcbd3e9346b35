"""What travels between the nodes: the typed objects behind DROPLET_* sockets, and how models
are handed to ComfyUI's model management.

Each model (transformer, VAE, T5) sits in a `comfy.model_patcher.ModelPatcher`; a node asks
`load_for_compute` for it, which calls `comfy.model_management.load_models_gpu` and returns the
module on `patcher.load_device`. Nothing else moves models between devices.
"""

from dataclasses import dataclass
from typing import Optional

import comfy.model_management
import comfy.model_patcher
import torch

from ..droplet_core import shapes
from ..droplet_core.configs import TransformerConfig
from ..droplet_core.preview import Projection
from ..droplet_core.text import TextEncoder


class ComponentHolder(torch.nn.Module):
    """ModelPatcher writes `.device` on the module it manages; diffusers and transformers models
    have a read-only `device` property, so each model is held in this plain module."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


def make_patcher(module: torch.nn.Module, load_device=None, offload_device=None):
    """A patcher that loads onto ComfyUI's torch device and offloads to its offload device,
    unless told otherwise (offload.py, the T5 loaders' device input)."""
    mm = comfy.model_management
    return comfy.model_patcher.ModelPatcher(ComponentHolder(module),
                                            load_device=load_device or mm.get_torch_device(),
                                            offload_device=offload_device or mm.unet_offload_device())


def load_for_compute(patcher, memory_required: int) -> torch.nn.Module:
    """The patcher's module, on patcher.load_device.

    force_full_load: these are plain torch modules without ComfyUI's cast-on-the-fly layers, so a
    partial (lowvram) load would leave some weights on the offload device.
    """
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    return patcher.model.module


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


@dataclass(frozen=True, eq=False)
class DropletModel:
    """DROPLET_MODEL: the transformer and the scheduler config it was released with."""

    patcher: object
    scheduler_config: dict
    source: str
    offload: str = "comfy_model_management"  # where the transformer lives while sampling (offload.py)
    swap_blocks: int = 0  # offload block_swap: this many blocks streamed from the offload device

    @property
    def config(self) -> TransformerConfig:
        return self.patcher.model.module.config


@dataclass(frozen=True, eq=False)
class DropletVae:
    """DROPLET_VAE: the CogVideoX-family causal 3D VAE (diffusers AutoencoderKLCogVideoX)."""

    patcher: object
    source: str


@dataclass(frozen=True, eq=False)
class DropletTextEncoder:
    """DROPLET_TEXT_ENCODER: transformers' T5 encoder and its tokenizer."""

    patcher: object
    tokenizer: object
    source: str

    def on_device(self, memory_required: int) -> TextEncoder:
        return TextEncoder(self.tokenizer, load_for_compute(self.patcher, memory_required))


@dataclass(frozen=True, eq=False)
class TextCond:
    """DROPLET_COND: one prompt's embeddings [1, tokens, hidden] and what produced them."""

    embeds: torch.Tensor
    source: str


@dataclass(frozen=True, eq=False)
class ImageCond:
    """DROPLET_IMAGE_COND: the inpaint latents [1, F_lat, 1 + 16, H/8, W/8] (mask, then the
    VAE-encoded masked video) for a width x height x frames video.

    inpaint_latents None means "every frame masked" (text-to-video): the sampler uses zeros
    with the model's channel count, as the reference does for an all-masked video.
    """

    inpaint_latents: Optional[torch.Tensor]
    width: int
    height: int
    frames: int
    noise_aug_strength: Optional[float] = None
    rgb_projection: Optional[Projection] = None  # latents -> RGB for progress previews (preview.py)

    @property
    def latent_shape(self):
        return latent_shape(self.width, self.height, self.frames)


def latent_shape(width: int, height: int, frames: int):
    """(latent frames, latent height, latent width) of a video."""
    scale = shapes.SPATIAL_COMPRESSION
    return shapes.latent_frames(frames), height // scale, width // scale
