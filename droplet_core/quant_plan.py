"""Which transformer layers a quantized file stores in a 4/8-bit format, and what its metadata
says, without ComfyUI (its formats live in comfy.quant_ops; nodes/quantized_writer.py applies them).

Quantized: the Linear weights inside the blocks (attention q/k/v/out, feed-forward), which hold
most of the weights and whose errors average out over 42 blocks. Kept as stored (bf16):
- patch_embed (the latent and T5 projections: the first layer every token passes),
- time_embedding and fps_embedding (the whole conditioning signal is their output),
- every norm's weight and bias, norm_out (the final adaLN), proj_out (the last layer, straight
  to the prediction), biases and 1-D tensors;
- the blocks' adaLN modulation Linears (norm1.linear, norm2.linear) unless asked: their output
  scales and gates every token of the block; see docs/quantization.md for the measurement.
"""

import hashlib
import json
import re
from pathlib import Path

from .model_kind import kind_of_class, kind_of_weights

BLOCK_LINEARS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
MODULATION_LINEARS = ("norm1.linear", "norm2.linear")
BLOCK_LAYER = re.compile(r"^transformer_blocks\.\d+\.(.+)$")
METADATA_KIND = "droplet_model_kind"
METADATA_QUANT = "droplet_quantization"


def quantized_layers(shapes: dict, quantize_modulation: bool = False) -> list:
    """The layer names (keys without `.weight`) to quantize, in the order of `shapes`
    ({key: shape} with the key prefixes already stripped)."""
    names = BLOCK_LINEARS + (MODULATION_LINEARS if quantize_modulation else ())
    layers = []
    for key, shape in shapes.items():
        match = BLOCK_LAYER.match(key)
        if match and key.endswith(".weight") and len(shape) == 2 and match.group(1)[: -len(".weight")] in names:
            layers.append(key[: -len(".weight")])
    return layers


def model_kind(config: dict, keys) -> str:
    """DropletVideo or Droplet3D (model_kind.py's label): the config's class name, or (for a config
    without one) whether the weights hold the FPS embedding, which Droplet3D has not."""
    return (kind_of_class(config.get("_class_name")) or kind_of_weights(keys)).label


def source_hash(files) -> str:
    """sha256 over the source weight files in order (the file's identity for a later check)."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def quant_metadata(config: dict, kind: str, fmt: str, layers: dict, kept: dict, source_files, sha256: str,
                   host: str) -> dict:
    """The safetensors metadata of a quantized transformer: the full config (what the loaders
    read, never inferred from packed shapes), the model kind, ComfyUI's own per-layer record
    (_quantization_metadata, which core reads too), the layers kept in high precision with why,
    and the source's file names and hash."""
    return {
        "config": json.dumps(config),
        METADATA_KIND: kind,
        "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers}),
        METADATA_QUANT: json.dumps({"format": fmt, "kept": kept, "host": host,
                                    "source": [Path(f).name for f in source_files], "source_sha256": sha256}),
    }
