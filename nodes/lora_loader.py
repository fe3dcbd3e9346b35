"""DropletVideoLoraLoader: a LoRA from ComfyUI/models/loras/ as ComfyUI weight patches on the MODEL.

It is core LoraLoaderModelOnly with DropletVideo's key names added: core maps kohya
(`lora_unet_transformer_blocks_0_attn1_to_q`) and ComfyUI (`diffusion_model.…`) keys of any
model, but not the diffusers/peft names CogVideoX LoRAs are usually saved with
(`transformer.transformer_blocks.0.attn1.to_q`), which only core's own model classes map. Core
*Train LoRA* files (`diffusion_model.…` LoRA factors, plus `.diff` / `.diff_b` differences for
norm weights and biases) load here and through core LoraLoaderModelOnly alike. The
patches are core's adapters (LoRA, LoHa, LoKr, DoRA), applied by ComfyUI when it loads the
model, on fp8 weights too; chain loaders to stack LoRAs.
"""

import logging

import comfy.lora
import comfy.lora_convert
import torch
from ..droplet_core.lora import check_lora_finite
from ..droplet_core.weights import load_tensors
from .model_paths import resolve, weight_files

LORA_FOLDER = "loras"
MODEL_PREFIX = "diffusion_model."
# Text-encoder parts some trainers save beside the transformer's: not this node's to apply.
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder.", "te.")
DIFFERENCE_SUFFIXES = ("diff", "diff_b")
# DropletVideo's FPS embedding, in any key style (fps_embedding.linear_1, lora_unet_fps_embedding_linear_1).
FPS_LAYER_NAMES = ("fps_embedding", "fps_proj")

logger = logging.getLogger(__name__)


def without_fps_layers(tensors: dict, model, name: str) -> dict:
    """A DropletVideo LoRA on a model with no FPS embedding (Droplet3D): its FPS layers have no target.
    They are dropped with a warning and the rest applies, as the blocks are the same."""
    if model.model.droplet_config.kind.has_fps:
        return tensors
    dropped = [key for key in tensors if any(layer in key for layer in FPS_LAYER_NAMES)]
    if dropped:
        logger.warning("LoRA %r: %d of its keys are for DropletVideo's FPS embedding (first: %s), which %s has "
                       "not: they are left out and the rest of the LoRA applies.", name, len(dropped), dropped[0],
                       model.model.droplet_config.kind.label)
    return {key: value for key, value in tensors.items() if key not in dropped}


def droplet_key_map(base_model) -> dict:
    """Core's key map plus the diffusers/peft (transformer., base_model.model., bare) and
    OneTrainer (lora_transformer_) names of every weight of the diffusion model."""
    key_map = comfy.lora.model_lora_keys_unet(base_model, {})
    for key in base_model.state_dict():
        if key.startswith(MODEL_PREFIX) and key.endswith(".weight"):
            name = key[len(MODEL_PREFIX):-len(".weight")]
            for alias in (f"transformer.{name}", f"base_model.model.{name}", name,
                          f"lora_transformer_{name.replace('.', '_')}"):
                key_map.setdefault(alias, key)
    return key_map


def unused_keys(tensors: dict, patches: dict, key_map: dict) -> list:
    """Keys no patch came from: adapters list theirs; core's plain differences (`.diff` for 1-D
    weights, `.diff_b` for biases, as core Train LoRA saves them) are used when their layer is mapped."""
    used = set()
    for adapter in patches.values():
        used.update(getattr(adapter, "loaded_keys", ()))
    for key in tensors:
        layer, _, suffix = key.rpartition(".")
        if suffix in DIFFERENCE_SUFFIXES and layer in key_map:
            used.add(key)
    return [key for key in tensors if key not in used and not key.endswith(".alpha")
            and not key.startswith(TEXT_ENCODER_PREFIXES)]


def check_shapes(patches: dict, base_model, name: str) -> None:
    """LoRA factors must agree in rank, and they and differences must fit their weight (ComfyUI would
    only log and skip a mismatch at load, and the run would go on without that layer)."""
    weights = base_model.state_dict()
    for key, adapter in patches.items():
        shape = logical_shape(base_model, key, weights[key])
        if isinstance(adapter, tuple) and adapter[0] == "diff" and adapter[1][0].shape != shape:
            raise ValueError(f"LoRA {name!r}: the difference for {key[len(MODEL_PREFIX):]} is "
                             f"{tuple(adapter[1][0].shape)}, the weight {tuple(shape)}; the LoRA was "
                             f"trained for a model of another size: use one made for this DropletVideo transformer.")
        if getattr(adapter, "name", None) != "lora":
            continue
        up, down, mid = adapter.weights[0], adapter.weights[1], adapter.weights[3]
        layer = key[len(MODEL_PREFIX):-len(".weight")]
        if mid is None and up.shape[1] != down.shape[0]:  # core would log the failed product and skip the layer
            raise ValueError(f"LoRA {name!r}, layer {layer}: up {tuple(up.shape)} has rank {up.shape[1]} but down "
                             f"{tuple(down.shape)} has rank {down.shape[0]}; the file is damaged or was saved "
                             f"wrongly (lora_B must be out x rank and lora_A rank x in): use another LoRA.")
        if (up.shape[0], down.flatten(1).shape[1]) != (shape[0], shape[1:].numel()):
            raise ValueError(f"LoRA {name!r}, layer {layer}: up {tuple(up.shape)} x down {tuple(down.shape)} does not "
                             f"fit the weight {tuple(shape)}; the LoRA was trained for a model of another size: use "
                             f"one made for this DropletVideo/CogVideoX transformer.")


def logical_shape(base_model, key: str, stored: torch.Tensor) -> torch.Size:
    """A weight's shape as its layer computes with it. A quantized layer's state dict holds the packed
    data (4-bit formats: two weights a byte); its QuantizedTensor keeps the unpacked shape."""
    weight = getattr(base_model.get_submodule(key.rpartition(".")[0]), key.rpartition(".")[2], None)
    params = getattr(weight, "_params", None)
    return torch.Size(params.orig_shape) if getattr(params, "orig_shape", None) else stored.shape


def lora_patches(model, path, name: str) -> dict:
    """{model key: adapter} of the LoRA file at `path` for this MODEL; errors name the file."""
    tensors = load_tensors([path])
    check_lora_finite(name, tensors)
    tensors = comfy.lora_convert.convert_lora(without_fps_layers(tensors, model, name))
    key_map = droplet_key_map(model.model)
    patches = comfy.lora.load_lora(tensors, key_map, log_missing=False)
    unused = unused_keys(tensors, patches, key_map)
    if not patches or unused:
        raise ValueError(f"LoRA {name!r}: {len(unused)} of its {len(tensors)} keys match no layer of this DropletVideo "
                         f"transformer (first: {unused[0] if unused else 'none'}); it was made for another model: "
                         f"use a LoRA trained for DropletVideo or CogVideoX-5B.")
    check_shapes(patches, model.model, name)
    return patches


class DropletVideoLoraLoader:
    DESCRIPTION = ("Applies a LoRA from ComfyUI/models/loras/ to the DropletVideo MODEL as ComfyUI weight patches "
                   "(diffusers/peft, kohya and ComfyUI key names; LoRA, LoHa, LoKr, DoRA): the original weights "
                   "come back when the model is used without it. Chain loaders to stack LoRAs.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA patched in.",)
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "From a DropletVideo loader (or another LoRA loader)."}),
            "lora_name": (weight_files(LORA_FOLDER), {
                "tooltip": "A .safetensors LoRA in ComfyUI/models/loras/ trained for DropletVideo (or CogVideoX-5B)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip":
                                   "How much of the LoRA to add (1.0 = as trained; 0 = off; negative subtracts it)."}),
        }}

    def load_lora(self, model, lora_name, strength):
        if strength == 0:  # as ComfyUI's LoraLoader: the model unchanged
            return (model,)
        patches = lora_patches(model, resolve(LORA_FOLDER, lora_name, "LoRA"), lora_name)
        patched = model.clone()
        added = patched.add_patches(patches, strength)
        assert len(added) == len(patches), "every key-map target is a model state-dict key"
        return (patched,)
