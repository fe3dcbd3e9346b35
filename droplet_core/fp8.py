"""fp8 weight storage for the transformer blocks' Linear layers (and T5's, on request).

Weights are stored as float8_e4m3fn with a per-layer float32 `scale_weight` (ComfyUI's
"scaled fp8" convention: real weight = weight.to(dtype) * scale_weight) and upcast to the
compute dtype per call, so VRAM holds 1 byte per weight while matmuls run in bf16/fp16/fp32.
Norms, embeddings and proj_out stay in the compute dtype. Parameter names do not change (the
scale is a non-persistent buffer); `save_fp8_transformer` writes the ComfyUI layout.

Files read: float8_e4m3fn / float8_e5m2 weights with or without `<layer>.scale_weight`
(scalar or per output channel); `scaled_fp8` markers and `scale_input` (only used by fp8
matmul kernels) are dropped. ComfyUI's newer mixed-precision layout (`weight_scale`,
`comfy_quant`) is refused with a message.
"""

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .configs import config_to_dict
from .weights import FLOAT8

FP8 = torch.float8_e4m3fn
UNSUPPORTED_SUFFIXES = (".weight_scale", ".comfy_quant", ".input_scale", ".weight_scale_2")


class Fp8Linear(nn.Linear):
    """nn.Linear whose weight is float8 x `scale_weight`, upcast to the input's dtype per call."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias):
        nn.Module.__init__(self)
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.register_buffer("scale_weight", scale.float().to(weight.device), persistent=False)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.scale_weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def set_dense(self, weight: torch.Tensor) -> None:
        """Replaces the weight with the fp8 quantization of a full-precision one (per-layer scale)."""
        self.weight.data, self.scale_weight = quantize(weight)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias) -> "Fp8Linear":
        return cls(*quantize(weight), bias)


def quantize(weight: torch.Tensor):
    """(float8 weight, float32 scale): the layer's largest magnitude maps to fp8's largest (448)."""
    limit = torch.finfo(FP8).max
    scale = weight.detach().abs().amax().float().clamp_min(1e-12) / limit
    return (weight.float() / scale).clamp(-limit, limit).to(FP8), scale


def dense_weight(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    return linear.dequantized(dtype) if isinstance(linear, Fp8Linear) else linear.weight.to(dtype)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


@torch.no_grad()
def quantize_linears(root: nn.Module, skip=()) -> int:
    """Every Linear inside `root` (but those named in `skip`) to fp8 storage, one layer at a time;
    returns the count."""
    count = 0
    for name, module in list(root.named_modules()):
        if isinstance(module, nn.Linear) and not isinstance(module, Fp8Linear) and name.rpartition(".")[2] not in skip:
            _replace(root, name, Fp8Linear.from_dense(module.weight, module.bias))
            count += 1
    return count


def quantize_blocks(transformer) -> int:
    return quantize_linears(transformer.transformer_blocks)


def quantize_t5(model) -> int:
    """T5's encoder blocks. `wo` stays as loaded (transformers keeps it in fp32, and T5's
    feed-forward casts its input to wo's weight dtype, which must not be fp8)."""
    return quantize_linears(model.encoder.block, skip=("wo",))


def _scale_for(scale, weight: torch.Tensor, key: str, source: str) -> torch.Tensor:
    if scale is None:
        return torch.ones((), dtype=torch.float32)
    if scale.numel() == 1:
        return scale.float().reshape(())
    if scale.numel() == weight.shape[0]:
        return scale.float().reshape(-1, 1)
    raise ValueError(f"{source}: {key} has a scale_weight of shape {tuple(scale.shape)}; only per-layer or per-output-"
                     f"channel scales are supported. Use a bf16/fp16 file or a per-layer scaled fp8 export.")


def take_fp8_layers(state: dict, dtype: torch.dtype, keep_fp8: bool, source: str) -> dict:
    """Reads ComfyUI's fp8 bookkeeping out of `state` (in place). Block Linear weights stay float8
    when `keep_fp8` and are returned as {layer name: scale}; every other float8 or scaled weight
    becomes `dtype` (weight x scale)."""
    unsupported = [k for k in state if k.endswith(UNSUPPORTED_SUFFIXES)]
    if unsupported:
        raise ValueError(f"{source}: {unsupported[0]} belongs to ComfyUI's mixed-precision quantization format, "
                         f"which DropletVideo does not read; use a plain or scaled fp8_e4m3fn file, or bf16.")
    state.pop("scaled_fp8", None)
    for key in [k for k in state if k.endswith(".scale_input")]:
        del state[key]  # only fp8 matmul kernels use it; weights are upcast here
    scales = {k[: -len(".scale_weight")]: state.pop(k) for k in list(state) if k.endswith(".scale_weight")}
    kept = {}
    for key, tensor in list(state.items()):
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        scale = scales.pop(layer, None) if layer else None
        if tensor.dtype not in FLOAT8 and scale is None:
            continue
        scale = _scale_for(scale, tensor, key, source)
        in_block_linear = layer is not None and layer.startswith("transformer_blocks.") and tensor.ndim == 2
        if keep_fp8 and tensor.dtype in FLOAT8 and in_block_linear:
            kept[layer] = scale
        else:
            state[key] = (tensor.float() * scale).to(dtype)
    if scales:
        raise ValueError(f"{source}: {next(iter(scales))}.scale_weight has no weight beside it; the file is "
                         f"incomplete or not a DropletVideo/CogVideoX transformer.")
    return kept


def adopt_fp8_layers(transformer, scales: dict) -> None:
    """Turns the loaded float8 Linear weights named in `scales` into Fp8Linear layers."""
    for name, scale in scales.items():
        linear = transformer.get_submodule(name)
        _replace(transformer, name, Fp8Linear(linear.weight.data, scale, linear.bias))


def save_fp8_transformer(transformer, path) -> None:
    """A single-file fp8 transformer in ComfyUI's scaled-fp8 layout, config in the metadata."""
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    if any(k.endswith(".to_qkv.weight") for k in state):
        raise ValueError("this transformer has fused QKV projections; save it before fuse_qkv.")
    for name, module in transformer.named_modules():
        if isinstance(module, Fp8Linear):
            scale = module.scale_weight
            state[f"{name}.scale_weight"] = (scale.reshape(-1) if scale.ndim else scale).clone()
    state["scaled_fp8"] = torch.zeros(0, dtype=FP8)
    config = config_to_dict(transformer.config)
    save_file(state, str(path), metadata={"config": json.dumps(config)})
