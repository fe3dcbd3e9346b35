"""DropletVideoLoraLoader: a LoRA from ComfyUI/models/loras/ as ModelPatcher weight patches.

The LoRA is not merged: the node clones the model's ModelPatcher and adds one patch per Linear
weight, so ComfyUI applies it when it loads that clone and restores the original weights when
another clone (the plain model, other LoRAs) is loaded. Chain loaders to stack LoRAs.
"""

import dataclasses
import logging

from ..droplet_core.fp8 import Fp8Linear
from ..droplet_core.lora import Lora, read_lora
from .model_paths import resolve, weight_files

try:  # ComfyUI 2025+: patches are adapter objects
    from comfy.weight_adapter import LoRAAdapter
except ImportError:  # older ComfyUI: ("lora", factors) tuples
    LoRAAdapter = None

logger = logging.getLogger(__name__)
LORA_FOLDER = "loras"
HOLDER_PREFIX = "module."  # the transformer sits in a ComponentHolder: state-dict keys are module.<param>


def lora_patch(up, down, alpha):
    """One weight patch in ComfyUI's format: (up, down, alpha, mid, dora_scale, reshape)."""
    factors = (up, down, alpha, None, None, None)
    return LoRAAdapter(set(), factors) if LoRAAdapter is not None else ("lora", factors)


def lora_patches(lora: Lora, transformer, name: str) -> dict:
    """{holder state-dict key: patch}, each layer shape-checked against the model's weight."""
    patches = {}
    for layer_name, layer in lora.layers.items():
        linear = transformer.get_submodule(layer_name)
        if isinstance(linear, Fp8Linear):  # ComfyUI would add the delta to the unscaled fp8 numbers
            raise ValueError(f"LoRA {name!r}: this model keeps its weights in fp8, which ComfyUI's weight patches "
                             f"cannot update: set weight_format to default on the DropletVideo loader.")
        weight = linear.weight
        shape = (layer.up.shape[0], layer.down.shape[1])
        if layer.up.shape[1] != layer.down.shape[0] or shape != tuple(weight.shape):
            raise ValueError(f"LoRA {name!r}, layer {layer_name}: up {tuple(layer.up.shape)} x down "
                             f"{tuple(layer.down.shape)} does not fit the weight {tuple(weight.shape)}; the LoRA "
                             f"was trained for a model of another size: use one made for this DropletVideo/CogVideoX "
                             f"transformer.")
        patches[f"{HOLDER_PREFIX}{layer_name}.weight"] = lora_patch(layer.up, layer.down, layer.alpha)
    return patches


class DropletVideoLoraLoader:
    DESCRIPTION = ("Applies a LoRA (diffusers/peft lora_A/lora_B or kohya lora_down/lora_up keys, with alpha) from "
                   "ComfyUI/models/loras/ to the DropletVideo transformer, as ComfyUI weight patches: the original "
                   "weights come back when the model is used without it. Chain loaders to stack LoRAs.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA patched in (for DropletVideoSampler or another LoRA loader).",)
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("DROPLET_MODEL", {"tooltip": "From a DropletVideo loader (or another LoRA loader)."}),
            "lora_name": (weight_files(LORA_FOLDER), {
                "tooltip": "A .safetensors LoRA in ComfyUI/models/loras/ trained for DropletVideo (or CogVideoX-5B)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip":
                                   "How much of the LoRA to add (1.0 = as trained; 0 = off; negative subtracts it)."}),
        }}

    def load_lora(self, model, lora_name, strength):
        if strength == 0:  # as ComfyUI's LoraLoader: the model unchanged
            return (model,)
        path = resolve(LORA_FOLDER, lora_name, "LoRA")
        transformer = model.patcher.model.module
        lora = read_lora(path, transformer)
        if lora.unknown_keys:
            logger.warning("DropletVideoLoraLoader: %d keys of %s match no layer of the DropletVideo transformer "
                            "and were skipped (first: %s)", len(lora.unknown_keys), lora_name, lora.unknown_keys[0])
        patches = lora_patches(lora, transformer, lora_name)
        patcher = model.patcher.clone()
        added = patcher.add_patches(patches, strength)
        assert len(added) == len(patches), "every patch key is a holder state-dict key"
        return (dataclasses.replace(model, patcher=patcher,
                                    source=f"{model.source} + LoRA {lora_name} @ {strength}"),)
