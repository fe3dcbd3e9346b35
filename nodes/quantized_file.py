"""Checks on a mixed-precision transformer file before anything is loaded, from its header and its
comfy_quant entries only: every layer's format is one this ComfyUI reads, its metadata agrees with
its tensors, each quantized layer has the packed shapes, dtypes and scales its format gives a
Linear of the config's shape (computed by the format's own quantize on a stand-in tensor), and
the model kind is the one being loaded. A file that fails is refused by name with the fix, before
any model is built, so nothing is half-loaded and core's loader never meets a KeyError mid-load."""

import json
from functools import lru_cache

import torch
from safetensors import safe_open

from ..droplet_core.loading import PATCH_WEIGHT, check_config_fits_weights, check_state_fits, strip_prefix
from ..droplet_core.quant_plan import METADATA_KIND, model_kind
from ..droplet_core.transformer import DropletVideoTransformer3DModel
from ..droplet_core.weights import read_header
from .native.quantized import QUANT_ENTRY, QUANT_METADATA
from .quantized_writer import host_formats, host_name, quant_ops

# ComfyUI releases whose comfy.quant_ops offers each format (the two this pack is tested on).
OFFERED_BY = {"float8_e4m3fn": "0.8.0", "float8_e5m2": "0.8.0", "nvfp4": "0.8.0", "mxfp8": "0.33.0",
              "int8_tensorwise": "0.33.0", "convrot_w4a4": "0.33.0", "asym_w4a8_int8": "0.33.0"}
SAFETENSORS_DTYPES = {torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.uint8: "U8",
                      torch.int8: "I8", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      getattr(torch, "float8_e8m0fnu", None): "F8_E8M0"}


def layer_formats(files) -> dict:
    """{layer: comfy_quant conf} from the files' per-layer entries and _quantization_metadata; a
    layer the two disagree on is refused (core would take the metadata's word silently)."""
    entries, listed = {}, {}
    for file in files:
        header = read_header(file)
        listed.update(json.loads((header.get("__metadata__") or {}).get(QUANT_METADATA, "{}")).get("layers", {}))
        keys = [k for k in header if k.endswith(QUANT_ENTRY)]
        if keys:
            with safe_open(str(file), framework="pt") as handle:
                for key in keys:
                    layer = strip_prefix(key)[: -len(QUANT_ENTRY)]
                    entries[layer] = json.loads(handle.get_tensor(key).numpy().tobytes())
    if entries and listed:
        for layer in sorted(set(entries) | set(listed)):
            if entries.get(layer) != listed.get(layer):
                raise ValueError(f"{files[0]}: the metadata's _quantization_metadata says layer {layer!r} is "
                                 f"{listed.get(layer)}, its comfy_quant entry says {entries.get(layer)}. The file was "
                                 f"edited or written wrongly: write it again (DropletVideo Save Quantized).")
    return entries or listed


def check_host_reads(layers: dict, source: str) -> None:
    formats = set(host_formats())
    for fmt in sorted({conf.get("format") for conf in layers.values()}):
        if fmt in formats:
            continue
        since = OFFERED_BY.get(fmt)
        fix = (f"update ComfyUI to {since} or newer (and `pip install -U comfy-kitchen`)" if since else
               "this format is unknown to the ComfyUI releases this pack knows: update ComfyUI")
        if not formats:
            fix = "install comfy-kitchen (`pip install comfy-kitchen`), which ComfyUI's quantized formats need"
        raise ValueError(f"{source} is quantized as {fmt}, which this ComfyUI ({host_name()}) cannot read (it reads "
                         f"{', '.join(sorted(formats)) or 'none'}): {fix}; or write the file again in one of those "
                         f"formats from the bf16 transformer.")


@lru_cache(maxsize=64)
def packed_entries(fmt: str, shape: tuple) -> dict:
    """{suffix: (safetensors dtype, shape)} the format's quantize gives a weight of `shape`."""
    layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    stand_in = torch.ones(shape, dtype=torch.bfloat16)
    tensors = quant_ops.QuantizedTensor.from_float(stand_in, layout).state_dict("")
    return {suffix: (SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape)) for suffix, t in tensors.items()}


def check_layers_fit(config, files, layers: dict, source: str) -> None:
    """The unquantized tensors have the config's shapes (the engine's own checks, on shapes read
    from the header) and each quantized layer holds exactly the tensors its format gives the
    config's Linear."""
    header = {}
    for file in files:
        header.update({strip_prefix(k): v for k, v in read_header(file).items() if k != "__metadata__"})
    with torch.device("meta"):
        expected = DropletVideoTransformer3DModel(config).state_dict()
        shapes = {k: torch.empty(v["shape"]) for k, v in header.items() if not k.endswith(QUANT_ENTRY)}
    check_config_fits_weights(config, shapes, source, files[0])
    dense = {k: v for k, v in shapes.items() if k.rpartition(".")[0] not in layers and k != PATCH_WEIGHT}
    check_state_fits({k: v for k, v in expected.items() if k.rpartition(".")[0] not in layers and k != PATCH_WEIGHT},
                     dense, source)  # the patch embedding's input channels may differ (loading.py fits them)
    for layer, conf in sorted(layers.items()):
        wanted = expected.get(f"{layer}.weight")
        if wanted is None or wanted.ndim != 2:
            raise ValueError(f"{source}: quantized layer {layer!r} is not a Linear layer of the DropletVideo config. "
                             f"This file was quantized for another model (or its config is not its own).")
        for suffix, (dtype, shape) in packed_entries(conf["format"], tuple(wanted.shape)).items():
            found = header.get(f"{layer}.weight{suffix}")
            if found is None:
                raise ValueError(f"{source}: layer {layer!r} ({conf['format']}) has no {layer}.weight{suffix} "
                                 f"tensor: its scale was dropped or the file is damaged. Write the file again "
                                 f"from the bf16 transformer.")
            if (found["dtype"], tuple(found["shape"])) != (dtype, shape):
                raise ValueError(f"{source}: {layer}.weight{suffix} is {found['dtype']} {tuple(found['shape'])}, but "
                                 f"{conf['format']} of the config's {tuple(wanted.shape)} Linear is {dtype} {shape}: "
                                 f"the metadata (config or format) disagrees with the tensors. Use the config the "
                                 f"file was written with, or write it again.")


def check_quantized_file(config, files, source: str, expected_kind: str) -> None:
    layers = layer_formats(files)
    if not layers:
        return  # scaled fp8: core's convert_old_quants makes its float8_e4m3fn entries
    metadata = read_header(files[0]).get("__metadata__") or {}
    if "config" not in metadata and not (files[0].parent / "config.json").is_file():
        raise ValueError(f"{source} is quantized but holds no config (metadata 'config') and has no config.json "
                         f"beside it: its packed shapes do not give one. Put the bf16 release's transformer/"
                         f"config.json beside it, or write it with DropletVideo Save Quantized, which stores it.")
    kind = metadata.get(METADATA_KIND)
    keys = [strip_prefix(k) for file in files for k in read_header(file)]
    if kind and kind != model_kind({}, keys):
        raise ValueError(f"{source}: its metadata says {kind}, its tensors are {model_kind({}, keys)}'s (FPS "
                         f"embedding {'absent' if kind == 'DropletVideo' else 'present'}); write it again.")
    if kind and kind != expected_kind:
        raise ValueError(f"{source} is a quantized {kind} transformer, not {expected_kind}: load it with the "
                         f"{kind} loader.")
    check_host_reads(layers, source)
    check_layers_fit(config, files, layers, source)
