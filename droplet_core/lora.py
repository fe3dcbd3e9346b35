"""CogVideoX-family LoRA files: read the common key styles, turn them into weight deltas.

Styles understood (any of the prefixes `transformer.`, `diffusion_model.`, `model.diffusion_model.`,
`base_model.model.`, `lora_unet_`, `lora_transformer_`):
- diffusers / peft: `transformer_blocks.0.attn1.to_q.lora_A.weight` + `lora_B.weight` (+ `.alpha`);
- kohya: `lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight` + `lora_up.weight` + `.alpha`;
- ComfyUI (core Train LoRA): `diffusion_model.<layer>.lora_up/lora_down.weight` + `.alpha` for any
  weight matrix (a convolution's down factor flattened), `.diff` for a 1-D weight (norms) and
  `.diff_b` for a bias: plain differences, added x strength.
delta = up @ down * (alpha / rank) * strength; without alpha the scale is 1 (alpha = rank).
Keys that match no Linear of the model are reported, never silently dropped; NaN/inf tensors
are refused by name (check_lora_finite) before anything is merged.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .fp8 import Fp8Linear
from .weights import load_tensors

logger = logging.getLogger(__name__)

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "lora_unet_",
            "lora_transformer_")
SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_down.weight": "down",
            ".lora_up.weight": "up", ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b"}


@dataclass
class LoraLayer:
    down: Optional[torch.Tensor]  # [rank, in] (in x kernel for a convolution); None: differences only
    up: Optional[torch.Tensor]  # [out, rank]
    alpha: Optional[float] = None
    diff: Optional[torch.Tensor] = None  # added to the weight
    diff_b: Optional[torch.Tensor] = None  # added to the bias

    def delta(self, strength: float = 1.0) -> Optional[torch.Tensor]:
        """The weight's delta, [out, in] (flattened for a convolution: lora_deltas reshapes it)."""
        if self.down is None:
            return None
        rank = self.down.shape[0]
        scale = (self.alpha / rank if self.alpha is not None else 1.0) * strength
        return (self.up.float() @ self.down.float().flatten(1)) * scale


@dataclass
class Lora:
    layers: Dict[str, LoraLayer]  # module name (model's own) -> factors
    unknown_keys: List[str]


def _split_key(key: str) -> Tuple[str, str]:
    for suffix, role in SUFFIXES.items():
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            return name, role
    return "", ""


def check_lora_finite(path, tensors: Dict[str, torch.Tensor]) -> None:
    """A LoRA holding NaN/inf would turn every merged weight it touches into NaN (a black video)."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: LoRA tensor {key!r} holds NaN/inf values; the file is damaged or was saved "
                             f"from a diverged training run: re-download it or use another LoRA.")


def read_lora(path, model: torch.nn.Module) -> Lora:
    """Maps a LoRA file onto `model`'s layers that hold a weight (every key style above)."""
    targets = {name for name, module in model.named_modules() if isinstance(getattr(module, "weight", None), torch.Tensor)}
    by_flat_name = {name.replace(".", "_"): name for name in targets}  # kohya writes dots as underscores
    parts: Dict[str, dict] = {}
    unknown = []
    tensors = load_tensors([Path(path)])
    check_lora_finite(path, tensors)
    for key, tensor in tensors.items():
        raw_name, role = _split_key(key)
        name = raw_name if raw_name in targets else by_flat_name.get(raw_name)
        if name is None:
            unknown.append(key)
            continue
        parts.setdefault(name, {})[role] = tensor
    layers = {}
    for name, found in parts.items():
        if ("down" in found) != ("up" in found) or not {"down", "diff", "diff_b"} & found.keys():
            unknown.extend(f"{name} ({role} without its pair)" for role in found)
            continue
        alpha = float(found["alpha"]) if "alpha" in found else None
        layers[name] = LoraLayer(found.get("down"), found.get("up"), alpha, found.get("diff"), found.get("diff_b"))
    if unknown:
        logger.warning("%s: %d LoRA keys match no layer of this model (first: %s)", path, len(unknown), unknown[0])
    if not layers:
        raise ValueError(f"{path}: no key of this LoRA matches a DropletVideo/CogVideoX transformer layer "
                         f"(first key: {unknown[0] if unknown else 'none'}); is it a LoRA for another model?")
    return Lora(layers, unknown)


def lora_deltas(lora: Lora, model: torch.nn.Module, strength: float) -> Dict[str, torch.Tensor]:
    """{parameter name: delta} for `model.state_dict()` keys (weights, and biases for `.diff_b`),
    shape-checked."""
    params = dict(model.named_parameters())
    deltas = {}
    for name, layer in lora.layers.items():
        if layer.up is not None and layer.up.shape[1] != layer.down.shape[0]:
            raise ValueError(f"LoRA layer {name}: up {tuple(layer.up.shape)} has rank {layer.up.shape[1]} but down "
                             f"{tuple(layer.down.shape)} has rank {layer.down.shape[0]}; the file is damaged or was "
                             f"saved wrongly (lora_B must be out x rank and lora_A rank x in): use another LoRA.")
        for key, parts in ((f"{name}.weight", (layer.delta(strength), _scaled(layer.diff, strength))),
                           (f"{name}.bias", (_scaled(layer.diff_b, strength),))):
            parts = [part for part in parts if part is not None]
            if parts:
                deltas[key] = _fitted(name, key, params.get(key), parts)
    return deltas


def _scaled(difference: Optional[torch.Tensor], strength: float) -> Optional[torch.Tensor]:
    return None if difference is None else difference.float() * strength


def _fitted(name: str, key: str, target: Optional[torch.Tensor], parts: List[torch.Tensor]) -> torch.Tensor:
    """The sum of a parameter's deltas in its shape (a convolution's LoRA delta comes flattened)."""
    shapes = [tuple(part.shape) for part in parts]
    if target is None or any(shape not in (tuple(target.shape), (target.shape[0], target[0].numel()))
                             for shape in shapes):
        what = "weight" if key.endswith(".weight") else "bias"
        raise ValueError(f"LoRA layer {name}: delta {' + '.join(map(str, shapes))} does not fit {what} "
                         f"{None if target is None else tuple(target.shape)}; the LoRA was trained for a model of "
                         f"another size.")
    return sum(part.reshape(target.shape) for part in parts)


@torch.no_grad()
def merge_loras(model: torch.nn.Module, loras: List[Tuple[str, float]]) -> List[str]:
    """Merges (path, strength) LoRAs into the weights; returns the unknown keys, for reporting."""
    params = dict(model.named_parameters())
    unknown = []
    for path, strength in loras:
        lora = read_lora(path, model)
        unknown.extend(lora.unknown_keys)
        for name, delta in lora_deltas(lora, model, strength).items():
            weight = params[name]
            layer = model.get_submodule(name.rpartition(".")[0])
            if isinstance(layer, Fp8Linear) and name.endswith(".weight"):  # fp8: dequantize, add, quantize again
                layer.set_dense(layer.dequantized(torch.float32) + delta.to(weight.device))
                continue
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return unknown
