"""Stand-in for comfy.weight_adapter.lora.LoRAAdapter: ComfyUI's LoRA arithmetic for plain
(up, down, alpha) factors. No LoCon mid weight, DoRA scale or reshape (refused, not ignored)."""

import torch

from .base import WeightAdapterBase


class LoRAAdapter(WeightAdapterBase):
    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights  # (up, down, alpha, mid, dora_scale, reshape)

    @classmethod
    def load(cls, x, lora, alpha, dora_scale, loaded_keys=None):
        """The factors of layer `x` in kohya (lora_up/lora_down) or peft (lora_B/lora_A) names."""
        for up_name, down_name in ((f"{x}.lora_up.weight", f"{x}.lora_down.weight"),
                                   (f"{x}.lora_B.weight", f"{x}.lora_A.weight")):
            if up_name in lora and down_name in lora:
                return cls({up_name, down_name}, (lora[up_name], lora[down_name], alpha, None, dora_scale, None))
        return None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        up, down, alpha, mid, dora_scale, reshape = self.weights
        if mid is not None or dora_scale is not None or reshape is not None:
            raise NotImplementedError(f"{key}: the ComfyUI stand-in has no LoCon/DoRA/reshape patches")
        mat1 = up.to(weight.device, intermediate_dtype)
        mat2 = down.to(weight.device, intermediate_dtype)
        scale = alpha / mat2.shape[0] if alpha is not None else 1.0
        lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
        weight += function(((strength * scale) * lora_diff).type(weight.dtype))
        return weight
