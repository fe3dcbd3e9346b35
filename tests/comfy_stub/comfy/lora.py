"""Stand-in for comfy.lora.calculate_weight: applies a key's patch list to a weight.

Each patch is (strength, value, strength_model, offset, function) as ModelPatcher.add_patches
stores it; value is a weight_adapter object (ComfyUI 2025+) or a legacy tuple: ("lora", (up,
down, alpha, mid, dora_scale, reshape)) or (diff,). Same arithmetic and order as ComfyUI.
"""

import logging

import torch

from . import weight_adapter


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
    for strength, v, strength_model, offset, function in patches:
        if function is None:
            function = lambda a: a  # noqa: E731
        if offset is not None:
            raise NotImplementedError(f"{key}: the ComfyUI stand-in has no offset patches")
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(v, weight_adapter.WeightAdapterBase):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                        original_weights)
            continue
        if len(v) == 1:
            if strength != 0.0:
                weight += function(strength * v[0].to(weight.device, weight.dtype))
        elif v[0] == "lora":  # ComfyUI before weight_adapter: the same arithmetic inline
            weight = weight_adapter.LoRAAdapter(set(), v[1]).calculate_weight(
                weight, key, strength, strength_model, offset, function, intermediate_dtype)
        else:
            logging.warning("patch type not recognized %s %s", v[0], key)
    return weight
