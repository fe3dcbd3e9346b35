"""Loading components from the released folder layout or from single files.

Models are built on the meta device and filled with `assign=True`, so a 5B transformer needs
one copy of its weights in RAM, already in the target dtype.
"""

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import torch
from diffusers import AutoencoderKLCogVideoX

from .configs import TransformerConfig, VaeConfig, config_from_dict, read_json
from .fp8 import adopt_fp8_layers, take_fp8_layers
from .model_kind import ModelKind, detect_transformer_kind, kind_of_class
from .transformer import DropletVideoTransformer3DModel
from .vae_memory import REFERENCE_ENCODE_FRAMES, trim_vae_memory
from .weights import load_tensors, metadata, refuse_pickle, tensor_shapes, weight_files

logger = logging.getLogger(__name__)

# Prefixes that single-file exports put in front of the diffusers keys.
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "vae.")
PATCH_WEIGHT = "patch_embed.proj.weight"
# DropletVideo-V1.0-weights/vae/config.json, for a VAE file that comes without its config.
RELEASE_VAE_CONFIG = Path(__file__).parent / "assets" / "release_vae_config.json"

PathLike = Union[str, Path]


def _component_files(path: Path):
    """(config dict or None, config source, weight files) for a folder or a single file."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        config = read_json(config_file) if config_file.is_file() else None
        return config, str(config_file), weight_files(path)
    refuse_pickle(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    sibling = path.with_name("config.json")
    if sibling.is_file():
        return read_json(sibling), str(sibling), [path]
    embedded = metadata(path).get("config")
    if embedded:
        return json.loads(embedded), f"{path} (metadata 'config')", [path]
    return None, str(path), [path]


def infer_transformer_config(shapes: dict, source: str) -> dict:
    """A transformer config read off tensor shapes, for single files without a config."""
    shapes = {strip_prefix(k): v for k, v in shapes.items()}
    if PATCH_WEIGHT not in shapes:
        raise ValueError(f"{source}: no {PATCH_WEIGHT!r} tensor: this is not a DropletVideo/CogVideoX transformer.")
    inner, in_channels, patch, _ = shapes[PATCH_WEIGHT]
    head_dim = shapes["transformer_blocks.0.attn1.norm_q.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    logger.warning("%s has no config: inferred from tensor shapes; the positional grid (sample_*) and "
                   "rotary flag take the reference defaults. Put a config.json beside it to be exact.", source)
    return {"num_attention_heads": inner // head_dim, "attention_head_dim": head_dim, "in_channels": in_channels,
            "out_channels": shapes["proj_out.weight"][0] // patch**2, "patch_size": patch,
            "text_embed_dim": shapes["patch_embed.text_proj.weight"][1],
            "time_embed_dim": shapes["time_embedding.linear_2.weight"][0], "num_layers": layers}


def strip_prefix(key: str) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def check_config_fits_weights(config: TransformerConfig, state: dict, source: str, weights: Path) -> None:
    """The config fields that shape the patch embedding, read off its weight (and the head size
    off the first block's norm_q) before _fit_patch_weight: only its input channels may differ."""
    weight = state.get(PATCH_WEIGHT)
    if weight is None:
        return
    norm_q = state.get("transformer_blocks.0.attn1.norm_q.weight")
    head_dim = norm_q.shape[0] if norm_q is not None else config.attention_head_dim
    found = {"patch_size": weight.shape[2], "attention_head_dim": head_dim,
             "num_attention_heads": weight.shape[0] // head_dim}
    for field, value in found.items():
        if getattr(config, field) != value:
            raise ValueError(f"{source}: config field {field!r} = {getattr(config, field)} does not match the "
                             f"weights in {weights} (which say {value}); use the config.json that came with them.")


def _fit_patch_weight(state: dict, model_shape: torch.Size) -> None:
    """A checkpoint with fewer input channels (16-ch T2V) is zero-padded into the 33-ch model;
    a wider one is truncated, as the reference does."""
    weight = state.get(PATCH_WEIGHT)
    if weight is None or weight.shape == model_shape:
        return
    fitted = weight.new_zeros(model_shape)
    channels = min(weight.shape[1], model_shape[1])
    fitted[:, :channels] = weight[:, :channels]
    logger.info("patch embedding: %d input channels in the checkpoint, %d in the model (zero-padded)",
                weight.shape[1], model_shape[1])
    state[PATCH_WEIGHT] = fitted


def check_state_fits(expected: dict, state: dict, source: str) -> None:
    """The keys and shapes of `state` are those of `expected` (a model's state dict)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        details = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                   else f"shape of {wrong[0]}: file {tuple(state[wrong[0]].shape)}, config {tuple(expected[wrong[0]].shape)}")
        raise ValueError(f"{source}: weights do not match the config ({details}; {len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(wrong)} wrong shapes). Check that config.json "
                         f"belongs to these weights.")


def assign_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    check_state_fits(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True, assign=True)


def transformer_config_and_files(path: PathLike, config_overrides: Optional[dict] = None):
    """(config, weight files, source) of a transformer folder or single file, `source` being what
    error messages call it; the config from config.json, the file's metadata or, failing both,
    the tensor shapes. The config's model_kind is detected from its `_class_name` and the tensor
    names (model_kind.py), read off the file headers."""
    config_dict, source, files = _component_files(Path(path))
    shapes = {}
    for file in files:
        shapes.update(tensor_shapes(file))
    if config_dict is None:
        config_dict = infer_transformer_config(shapes, source)
    config = config_from_dict(TransformerConfig, {**config_dict, **(config_overrides or {})}, source)
    kind = detect_transformer_kind(config_dict.get("_class_name"), map(strip_prefix, shapes), source)
    return replace(config, model_kind=kind.name), files, source


def checkpoint_kind(root: PathLike) -> ModelKind:
    """The model kind of a released folder, from its transformer (class name and weights) before
    anything is loaded; a model_index.json naming the other model is refused."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {root} does not exist: point --ckpt at the released "
                                f"DropletVideo-V1.0-weights or Droplet3D-5B folder, or use --ckpt tiny for the "
                                f"built-in test model.")
    config, _, source = transformer_config_and_files(root / "transformer")
    index_file = root / "model_index.json"
    index = read_json(index_file)
    named = {entry[1] for entry in (index.get("transformer"), index.get("vae")) if isinstance(entry, list)}
    named.add(index.get("_class_name"))
    for class_name in sorted(filter(None, named)):
        other = kind_of_class(class_name)
        if other is not None and other != config.kind:
            raise ValueError(f"{index_file} names {class_name} ({other.label}), but {source} is a "
                             f"{config.kind.label} transformer. The folder mixes two models: re-download it.")
    return config.kind


def fit_to_config(config: TransformerConfig, state: dict, files: list, source: str) -> None:
    """Checks the weights against the config and fits the patch embedding's input channels (in place)."""
    with torch.device("meta"):
        patch_shape = DropletVideoTransformer3DModel(config).patch_embed.proj.weight.shape
    check_config_fits_weights(config, state, source, files[0].parent if len(files) > 1 else files[0])
    _fit_patch_weight(state, patch_shape)


def read_transformer(path: PathLike, dtype: torch.dtype = torch.float32, config_overrides: Optional[dict] = None,
                     keep_fp8: bool = False):
    """(config, state dict, fp8 layers, source) of a transformer folder or single file, each tensor
    already in `dtype` (memory-mapped when the file has that dtype); what load_transformer builds
    from (ComfyUI's native model, nodes/native, calls its two halves to pick its own path)."""
    config, files, source = transformer_config_and_files(path, config_overrides)
    return (config, *read_transformer_state(config, files, source, dtype, keep_fp8), source)


def read_transformer_state(config: TransformerConfig, files: list, source: str, dtype: torch.dtype,
                           keep_fp8: bool = False):
    """(state dict, fp8 layers) of transformer_config_and_files's files: float8 and scaled weights
    dequantized to `dtype` but, with `keep_fp8`, the block Linear weights (fp8.py)."""
    state = load_tensors(files, dtype, KEY_PREFIXES, keep_float8=True)
    fp8_layers = take_fp8_layers(state, dtype, keep_fp8, source)
    fit_to_config(config, state, files, source)
    return state, fp8_layers


def load_transformer(path: PathLike, dtype: torch.dtype = torch.float32, config_overrides: Optional[dict] = None,
                     keep_fp8: bool = False) -> DropletVideoTransformer3DModel:
    """Transformer from a folder (config.json + safetensors) or a single .safetensors file.

    float8 files (ComfyUI's `*_fp8_e4m3fn.safetensors`, scaled or not) are dequantized to `dtype`,
    or with `keep_fp8` keep their block Linear weights in fp8 (fp8.py)."""
    config, state, fp8_layers, source = read_transformer(path, dtype, config_overrides, keep_fp8)
    with torch.device("meta"):
        model = DropletVideoTransformer3DModel(config)
    assign_strict(model, state, source)
    adopt_fp8_layers(model, fp8_layers)
    model.init_buffers(dtype=dtype)
    return model.eval().requires_grad_(False)


def load_vae(path: PathLike, dtype: torch.dtype = torch.float32) -> AutoencoderKLCogVideoX:
    """The CogVideoX VAE (the reference's AutoencoderKLDropletVideo maps onto it key for key)."""
    config_dict, source, files = _component_files(Path(path))
    if config_dict is None:  # a single file as users download them: the release VAE's config
        config_dict, source = read_json(RELEASE_VAE_CONFIG), f"{source} with the release VAE config"
    config = config_from_dict(VaeConfig, config_dict, source)
    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX(**config.diffusers_kwargs())
    assign_strict(vae, load_tensors(files, dtype, KEY_PREFIXES), source)
    vae.num_sample_frames_batch_size = REFERENCE_ENCODE_FRAMES
    trim_vae_memory(vae)
    return vae.eval().requires_grad_(False)


def load_scheduler_config(folder: PathLike) -> dict:
    return read_json(Path(folder) / "scheduler_config.json")
