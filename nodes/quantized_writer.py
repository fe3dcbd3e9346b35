"""Writing the transformer as one .safetensors file in ComfyUI's mixed-precision format, with the
host's own quantization (comfy.quant_ops layouts through QuantizedTensor.from_float; the rounding
is comfy-kitchen's). Here and not in droplet_core because the formats are ComfyUI's: the command
line (tools/quantize_transformer.py) imports this module from a ComfyUI checkout.

Layout, as core's mixed-precision Linear reads it (comfy/ops.py): per quantized layer the packed
`<layer>.weight`, its scales (`weight_scale`, `weight_scale_2`, `weight_s_rel`, ... whatever the
layout's state_dict gives) and `<layer>.comfy_quant` (JSON bytes: the format and its parameters).
Which layers: droplet_core/quant_plan.py. The file is written from one source tensor at a time:
peak memory is the output plus one layer of the source, below one bf16 copy."""

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..droplet_core.configs import config_to_dict
from ..droplet_core.loading import strip_prefix, transformer_config_and_files
from ..droplet_core.quant_plan import model_kind, quant_metadata, quantized_layers, source_hash
from ..droplet_core.weights import read_header
from .native.quantized import QUANT_ENTRY, quantized_format

try:
    import comfy.quant_ops as quant_ops
except ImportError:  # a ComfyUI before its mixed-precision formats (0.4.0)
    quant_ops = None

logger = logging.getLogger(__name__)


def host_formats() -> list:
    """The formats this ComfyUI quantizes to: comfy.quant_ops.QUANT_ALGOS, empty without comfy-kitchen."""
    algos = getattr(quant_ops, "QUANT_ALGOS", {})
    if not algos or not hasattr(quant_ops.QuantizedTensor, "from_float"):  # no comfy-kitchen: a stand-in class
        return []
    return list(algos)


def host_name() -> str:
    try:
        import comfyui_version
        comfy_version = comfyui_version.__version__
    except ImportError:  # a ComfyUI before the version module
        comfy_version = "unknown"
    try:
        from importlib.metadata import version
        kitchen = version("comfy-kitchen")
    except Exception:  # not installed as a distribution
        kitchen = "unknown"
    return f"ComfyUI {comfy_version}, comfy-kitchen {kitchen}"


def check_format(fmt: str) -> None:
    formats = host_formats()
    if fmt not in formats:
        raise ValueError(f"format {fmt!r} is not offered by this ComfyUI ({host_name()}; it offers "
                         f"{', '.join(formats) or 'none: comfy-kitchen is missing, `pip install comfy-kitchen`'}). "
                         f"Pick one of those, or update ComfyUI and comfy-kitchen.")


def quantize_weight(weight: torch.Tensor, fmt: str, layer: str, device="cpu") -> dict:
    """The tensors of one quantized layer (on the CPU), comfy_quant entry included, keyed under `layer`;
    quantized on `device` (comfy-kitchen's CPU code takes minutes a GiB for the 4-bit formats)."""
    layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    quantized = quant_ops.QuantizedTensor.from_float(weight.to(device), layout)
    tensors = {key: value.cpu().contiguous() for key, value in quantized.state_dict(f"{layer}.weight").items()}
    tensors[layer + QUANT_ENTRY] = torch.tensor(list(json.dumps(layer_conf(fmt, quantized)).encode()),
                                                dtype=torch.uint8)
    return tensors


def layer_conf(fmt: str, quantized) -> dict:
    """The comfy_quant entry: the format and the layout parameters core's loader reads back."""
    params, conf = quantized._params, {"format": fmt}
    for name in {"convrot_w4a4": ("convrot_groupsize",), "asym_w4a8_int8": ("group_size", "convrot_groupsize")
                 }.get(fmt, ()):
        conf[name] = int(getattr(params, name))
    if fmt == "convrot_w4a4" and getattr(params, "linear_dtype", "int4") != "int4":
        conf["linear_dtype"] = params.linear_dtype
    return conf


def quantize_state_dict(state: dict, fmt: str, quantize_modulation: bool = False, device="cpu"):
    """quantize_tensors over a transformer state dict (prefixes stripped), emptied as it goes."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    return quantize_tensors(((key, state.pop(key)) for key in list(state)), shapes, fmt, quantize_modulation, device)


def quantize_tensors(items, shapes: dict, fmt: str, quantize_modulation: bool = False, device="cpu"):
    """(tensors, per-layer comfy_quant entries, kept layers with why) from (key, tensor) pairs taken
    one at a time, so the caller holds the output and one source layer."""
    check_format(fmt)
    chosen = set(quantized_layers(shapes, quantize_modulation))
    tensors, layers, kept = {}, {}, {}
    for key, tensor in items:
        layer = key[: -len(".weight")]
        if key.endswith(".weight") and layer in chosen:
            try:
                quantized = quantize_weight(tensor, fmt, layer, device)
            except ValueError as error:  # the layout's own shape rule (e.g. ConvRot groups of 256 inputs)
                kept[layer] = f"{fmt} refused its shape {tuple(tensor.shape)}: {error}"
            else:
                tensors.update(quantized)
                layers[layer] = layer_conf_of(quantized, layer)
                continue
        tensors[key] = tensor.contiguous()
    if not layers:
        raise ValueError(f"no layer of this transformer fits {fmt!r} ({next(iter(kept.values()), 'no block Linear')}); "
                         f"pick another format.")
    for layer, why in kept.items():
        logger.warning("%s stays in its stored dtype: %s", layer, why)
    return tensors, layers, kept


def layer_conf_of(tensors: dict, layer: str) -> dict:
    return json.loads(bytes(tensors[layer + QUANT_ENTRY].tolist()))


def read_source(path: Path):
    """(config dict with class name, files, source, {key: shape}) of a bf16/fp16/fp32 transformer;
    a file that is already quantized is refused (quantizing it again would compound the error)."""
    config, files, source = transformer_config_and_files(path)
    headers = [read_header(f) for f in files]
    if quantized_format(files) is not None or any(entry.get("dtype") in ("F8_E4M3", "F8_E5M2") for header in headers
                                                  for entry in header.values() if isinstance(entry, dict)):
        raise ValueError(f"{source} is already quantized: quantize from the bf16 release transformer "
                         f"(DropletVideo-V1.0-weights/transformer or its single-file bf16 export).")
    shapes = {strip_prefix(k): tuple(v["shape"]) for header in headers for k, v in header.items()
              if k != "__metadata__"}
    class_name = _class_name(Path(path), files)
    kind = model_kind({"_class_name": class_name}, shapes)
    return config_to_dict(config, class_name or f"{kind}Transformer3DModel"), files, source, shapes


def source_tensors(files):
    """(key without prefix, tensor) one at a time from the source files. Each tensor is read through
    its own safe_open: a handle kept open keeps every page read so far mapped, and resident, which
    would put the whole source on top of the output (1.5x bf16 at the peak, measured)."""
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
        for key in keys:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                yield strip_prefix(key), handle.get_tensor(key)


def _class_name(path: Path, files) -> str:
    raw = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if raw.is_file():
        return json.loads(raw.read_text()).get("_class_name", "")
    embedded = (read_header(files[0]).get("__metadata__") or {}).get("config")
    return json.loads(embedded).get("_class_name", "") if embedded else ""


def write_quantized(source_path, out_path, fmt: str, quantize_modulation: bool = False, device="cpu") -> dict:
    """Writes the transformer at `source_path` (release folder transformer/ or one file) as `out_path`
    in `fmt`; returns the file's metadata. Refuses to overwrite a file."""
    out_path = Path(out_path)
    if out_path.exists():
        raise ValueError(f"{out_path} exists: delete it first or choose another file name.")
    check_format(fmt)
    config, files, source, shapes = read_source(Path(source_path))
    kind = model_kind(config, shapes)
    tensors, layers, kept = quantize_tensors(source_tensors(files), shapes, fmt, quantize_modulation, device)
    metadata = quant_metadata(config, kind, fmt, layers, kept, files, source_hash(files), host_name())
    partial = out_path.with_name(out_path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.rename(out_path)  # the loader never lists a half-written file
    logger.info("%s: %d layers in %s, %d kept; written to %s", source, len(layers), fmt, len(kept), out_path)
    return metadata
