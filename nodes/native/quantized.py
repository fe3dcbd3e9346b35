"""ComfyUI's quantized transformer files, kept quantized on the native MODEL as core keeps its own
diffusion models (comfy/sd.py load_diffusion_model_state_dict).

Two layouts: scaled fp8 (a `scaled_fp8` marker, float8 weights with `<layer>.scale_weight`, maybe
`<layer>.scale_input`) and mixed precision (`_quantization_metadata` in the safetensors metadata,
or `<layer>.comfy_quant` entries). comfy.utils.convert_old_quants turns the first into the second;
comfy.utils.detect_layer_quantization then gives the model config its quant_config, so BaseModel
builds the layers with comfy.ops.mixed_precision_ops, whose Linear loads its weight as a
QuantizedTensor in its own _load_from_state_dict. ComfyUI casts, offloads and patches (LoRA) those
weights as it does its own. These functions came with ComfyUI 0.4.0 (December 2025); an older
ComfyUI dequantizes a scaled fp8 file at load, as the engine does (droplet_core/fp8.py).
"""

import json
import logging
from typing import Optional

import comfy.ops
import comfy.utils
import torch

from ...droplet_core.loading import check_state_fits, strip_prefix
from ...droplet_core.transformer import DropletVideoTransformer3DModel
from ...droplet_core.weights import FLOAT8, load_tensors, metadata, read_header

logger = logging.getLogger(__name__)

SCALED_FP8 = "scaled_fp8"
QUANT_METADATA = "_quantization_metadata"
QUANT_ENTRY = ".comfy_quant"
FIRST_VERSION = "0.4.0"
NEEDED = ((comfy.utils, "convert_old_quants"), (comfy.utils, "detect_layer_quantization"),
          (comfy.ops, "mixed_precision_ops"))


def quantized_format(files) -> Optional[str]:
    """"mixed precision", "scaled fp8" or None, read off the files' headers (no tensor is loaded)."""
    for file in files:
        header = read_header(file)
        if QUANT_METADATA in (header.get("__metadata__") or {}) or any(k.endswith(QUANT_ENTRY) for k in header):
            return "mixed precision"
        if any(strip_prefix(k) == SCALED_FP8 for k in header):
            return "scaled fp8"
    return None


def keeps_quantized(files, source: str) -> bool:
    """Whether the files are quantized in a layout this ComfyUI keeps quantized. A scaled fp8 file
    on a ComfyUI without mixed-precision operations is dequantized instead (as before 0.4.0); a
    mixed-precision one cannot be read there."""
    kind = quantized_format(files)
    lacking = [f"{module.__name__}.{name}" for module, name in NEEDED if not hasattr(module, name)]
    if kind is None or not lacking:
        return kind is not None
    if kind == "mixed precision":
        raise ValueError(f"{source} is quantized in ComfyUI's mixed-precision format, which this ComfyUI cannot "
                         f"read (it has no {lacking[0]}): update ComfyUI to {FIRST_VERSION} or newer, or use a "
                         f"bf16/fp16 or scaled fp8 file.")
    logger.warning("%s is a scaled fp8 file; this ComfyUI has no %s, so it is dequantized at load (2 to 4 times the "
                   "memory of fp8). ComfyUI %s or newer keeps it in fp8.", source, lacking[0], FIRST_VERSION)
    return False


def quantized_layers(state: dict) -> set:
    return {key[: -len(QUANT_ENTRY)] for key in state if key.endswith(QUANT_ENTRY)}


def read_quantized(files, dtype: torch.dtype) -> dict:
    """The files' tensors in ComfyUI's mixed-precision layout (`<layer>.comfy_quant` entries), key
    prefixes stripped: quantized layers' weights and scales as stored, every other tensor in `dtype`."""
    state, layers = {}, {}
    for file in files:
        state.update(load_tensors([file]))
        layers.update(json.loads(metadata(file).get(QUANT_METADATA, "{}")).get("layers", {}))
    marker = next((key for key in state if strip_prefix(key) == SCALED_FP8), SCALED_FP8)
    found = {QUANT_METADATA: json.dumps({"layers": layers})} if layers else {}
    state, _ = comfy.utils.convert_old_quants(state, marker[: -len(SCALED_FP8)], metadata=found)
    state = {strip_prefix(key): tensor for key, tensor in state.items()}
    quantized = quantized_layers(state)

    def stored(key: str) -> bool:
        layer, _, name = key.rpartition(".")
        return layer in quantized and name != "bias"

    return {key: tensor if stored(key) or not tensor.is_floating_point() else tensor.to(dtype)
            for key, tensor in state.items()}


def check_quantized_fits(config, state: dict, source: str) -> None:
    """The unquantized tensors match the config key for key and shape for shape; each quantized
    layer is one of its Linear layers (an fp8 weight has the Linear's shape; other formats pack)."""
    with torch.device("meta"):
        expected = DropletVideoTransformer3DModel(config).state_dict()
    layers = quantized_layers(state)

    def dense(tensors: dict) -> dict:
        return {key: value for key, value in tensors.items() if key.rpartition(".")[0] not in layers}

    check_state_fits(dense(expected), dense(state), source)
    for layer in sorted(layers):
        weight, wanted = state.get(f"{layer}.weight"), expected.get(f"{layer}.weight")
        if wanted is None or wanted.ndim != 2 or weight is None or (
                weight.dtype in FLOAT8 and weight.shape != wanted.shape):
            raise ValueError(f"{source}: quantized layer {layer!r} (weight "
                             f"{None if weight is None else tuple(weight.shape)}) is not a Linear layer of the "
                             f"config (which has {None if wanted is None else tuple(wanted.shape)}). Check that "
                             f"config.json belongs to these weights.")


def load_quantized(diffusion_model: torch.nn.Module, config, state: dict, source: str) -> None:
    """Loads `state` through the layers' own _load_from_state_dict (ComfyUI's quantized Linear
    makes its QuantizedTensor there); every other tensor is assigned as read."""
    check_quantized_fits(config, state, source)
    missing, unexpected = diffusion_model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{source}: ComfyUI's quantized layers did not take every tensor (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); the file's quantization format may be newer than this "
                         f"ComfyUI: update ComfyUI, or use a bf16/fp16 file.")
