"""Stand-in for comfy.ops: layers that cast their weights to the input's device and dtype when
comfy_cast_weights is set (partial loading, manual cast), as ComfyUI 0.33's do."""

import torch


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function = []
    bias_function = []


def cast_bias_weight(s, input):
    weight = s.weight.to(device=input.device, dtype=input.dtype)
    for function in s.weight_function:
        weight = function(weight)
    bias = None if s.bias is None else s.bias.to(device=input.device, dtype=input.dtype)
    return weight, bias


def _cast_forward(base):
    def forward(self, input, *args, **kwargs):
        if self.comfy_cast_weights or len(self.weight_function) > 0:
            return self.forward_comfy_cast_weights(input)
        return base.forward(self, input, *args, **kwargs)
    return forward


class disable_weight_init:
    class Linear(torch.nn.Linear, CastWeightBiasOp):
        def reset_parameters(self):
            return None

        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return torch.nn.functional.linear(input, weight, bias)

        forward = _cast_forward(torch.nn.Linear)

    class LayerNorm(torch.nn.LayerNorm, CastWeightBiasOp):
        def reset_parameters(self):
            return None

        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input) if self.weight is not None else (None, None)
            return torch.nn.functional.layer_norm(input, self.normalized_shape, weight, bias, self.eps)

        forward = _cast_forward(torch.nn.LayerNorm)

    class Conv2d(torch.nn.Conv2d, CastWeightBiasOp):
        def reset_parameters(self):
            return None

        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)

        forward = _cast_forward(torch.nn.Conv2d)


class manual_cast(disable_weight_init):
    class Linear(disable_weight_init.Linear):
        comfy_cast_weights = True

    class LayerNorm(disable_weight_init.LayerNorm):
        comfy_cast_weights = True

    class Conv2d(disable_weight_init.Conv2d):
        comfy_cast_weights = True


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8=False, fp8_optimizations=False,
                    model_config=None):
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast
