"""ComfyUI's quantized transformer files on the native MODEL: scaled fp8 and mixed precision stay
quantized in ComfyUI's own layers (ComfyUI 0.4.0+), sample as the engine does with the file
dequantized, take LoRAs and load partially; a ComfyUI without those layers dequantizes a scaled
fp8 file as before and refuses a mixed-precision one by name.

The stand-in has no mixed-precision operations (they need ComfyUI's QuantizedTensor), so the
tests that keep the weights quantized run against a real ComfyUI (COMFYUI_PATH)."""

import json
import logging
import shutil

import comfy.model_management
import comfy.ops
import comfy.utils
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from droplet_core.fp8 import quantize_blocks, save_fp8_transformer
from droplet_core.loading import load_transformer
from droplet_core.pipeline import load_pipeline
from lora_files import random_factors, write_peft
from node_fixtures import (ATOL, as_image, conds, engine_latent, image_cond, load_partially, loaded, run,  # noqa: F401
                           sample, start_image)

SMALL = dict(width=64, height=64, frames=5)
FP8 = torch.float8_e4m3fn
PREFIX = "model.diffusion_model."  # as ComfyUI saves a diffusion model
MIXED_OPS = all(hasattr(module, name) for module, name in ((comfy.utils, "convert_old_quants"),
                                                           (comfy.ops, "mixed_precision_ops")))
needs_mixed_ops = pytest.mark.skipif(not MIXED_OPS, reason="this ComfyUI (the stand-in, or one before 0.4.0) has "
                                     "no mixed-precision operations; run with COMFYUI_PATH set to a real ComfyUI")


@pytest.fixture(scope="module")
def small_cond(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image), **SMALL)


@pytest.fixture(scope="module")
def fp8_state(models_dir, tmp_path_factory):
    """(tensors, metadata) of the tiny transformer as ComfyUI's scaled fp8: block Linear weights in
    float8 with a per-layer scale_weight, scale_input 1 (as ComfyUI's exports write it), the
    scaled_fp8 marker, keys under model.diffusion_model."""
    transformer = load_transformer(models_dir / "DropletVideo" / "tiny" / "transformer")
    quantize_blocks(transformer)
    scratch = tmp_path_factory.mktemp("fp8") / "scaled.safetensors"
    save_fp8_transformer(transformer, scratch)
    state = load_file(str(scratch))
    for key in [k for k in state if k.endswith(".scale_weight")]:
        state[key.replace(".scale_weight", ".scale_input")] = torch.ones((), dtype=torch.float32)
    with safe_open(str(scratch), framework="pt") as handle:
        metadata = handle.metadata()  # the config
    return {PREFIX + k: v for k, v in state.items()}, metadata


def write_model(models_dir, name: str, state: dict, metadata: dict) -> str:
    """`state` as diffusion_models/<name>.safetensors (with the tiny's scheduler_config.json beside it)
    and as the transformer of a release folder DropletVideo/<name> (the engine's input); returns the
    file name."""
    save_file(state, str(models_dir / "diffusion_models" / f"{name}.safetensors"), metadata=metadata)
    tiny, folder = models_dir / "DropletVideo" / "tiny", models_dir / "DropletVideo" / name
    shutil.copyfile(tiny / "scheduler" / "scheduler_config.json", models_dir / "diffusion_models" / "scheduler_config.json")
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        if not (folder / part).exists():
            (folder / part).symlink_to(tiny / part)
    (folder / "transformer" / "config.json").write_text((tiny / "transformer" / "config.json").read_text())
    save_file(state, str(folder / "transformer" / "model.safetensors"), metadata=metadata)
    return f"{name}.safetensors"


@pytest.fixture(scope="module")
def scaled_fp8(models_dir, fp8_state):
    return write_model(models_dir, "tiny_scaled_fp8", *fp8_state)


@pytest.fixture(scope="module")
def dequantized_latent(models_dir, scaled_fp8, start_image):
    """The engine's latents with the scaled fp8 file dequantized at load (droplet_core/fp8.py)."""
    engine = load_pipeline(models_dir / "DropletVideo" / "tiny_scaled_fp8",
                           device=comfy.model_management.get_torch_device())
    return engine_latent(engine, image=start_image, **SMALL, steps=2)


def load(pack, name: str):
    return run(pack, "DropletVideoTransformerLoader", transformer_name=name, precision="fp32")[0]


def is_quantized(weight) -> bool:
    """A QuantizedTensor (ComfyUI's) holding float8 data."""
    from comfy.quant_ops import QuantizedTensor

    return isinstance(weight, QuantizedTensor) and weight._qdata.dtype == FP8


def block_linears(model):
    return [m for name, m in model.model.diffusion_model.named_modules()
            if name.startswith("transformer_blocks.") and hasattr(m, "in_features")]


@pytest.fixture(scope="module")
def quantized_latent(pack, conds, small_cond, scaled_fp8):
    return sample(pack, load(pack, scaled_fp8), conds, small_cond, steps=2)["samples"]


@needs_mixed_ops
def test_scaled_fp8_file_stays_fp8_and_samples_as_the_dequantized_engine(pack, loaded, scaled_fp8, quantized_latent,
                                                                         dequantized_latent):
    model = load(pack, scaled_fp8)
    linears = block_linears(model)
    assert linears and all(is_quantized(m.weight) for m in linears)
    # The block Linears (76% of the tiny model's weights) take 1 byte a weight instead of fp32's 4.
    assert model.model_size() < 0.5 * loaded[0].model_size()
    assert model.model.diffusion_model.proj_out.weight.dtype == torch.float32  # unquantized layers: the precision
    assert model.model.manual_cast_dtype == torch.float32
    if comfy.model_management.supports_fp8_compute(model.load_device):  # fp8 matmuls, inputs quantized too
        error = (quantized_latent - dequantized_latent).abs().max()
        assert error < 0.2 * dequantized_latent.abs().max()
    else:
        # The same float8 values times the same float32 scale, dequantized per call here and once at load
        # in the engine, both computing in fp32: equal up to ATOL, LATENT's unscale/scale rounding.
        torch.testing.assert_close(quantized_latent, dequantized_latent, atol=ATOL, rtol=0)


@needs_mixed_ops
def test_mixed_precision_file_loads_as_the_scaled_fp8_one(pack, models_dir, conds, small_cond, fp8_state,
                                                          quantized_latent):
    """The newer layout: weight_scale beside the float8 weight, the layers in _quantization_metadata."""
    state, metadata = fp8_state
    mixed = {k.replace(".scale_weight", ".weight_scale"): v for k, v in state.items()
             if not k.endswith(("scaled_fp8", ".scale_input"))}
    layers = {k[len(PREFIX): -len(".weight_scale")]: {"format": "float8_e4m3fn"} for k in mixed
              if k.endswith(".weight_scale")}
    name = write_model(models_dir, "tiny_mixed", mixed, {**metadata, "_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": layers})})
    model = load(pack, name)
    assert all(is_quantized(m.weight) for m in block_linears(model))
    latent = sample(pack, model, conds, small_cond, steps=2)["samples"]
    torch.testing.assert_close(latent, quantized_latent, atol=ATOL, rtol=0)  # the same layers, the same weights


@needs_mixed_ops
def test_a_lora_patches_the_quantized_weights(pack, models_dir, loaded, conds, small_cond, scaled_fp8,
                                              quantized_latent):
    write_peft(models_dir / "loras" / "droplet_test_scaled_fp8.safetensors",
               random_factors(loaded[0].model.diffusion_model, 5))
    patched = run(pack, "DropletVideoLoraLoader", model=load(pack, scaled_fp8),
                  lora_name="droplet_test_scaled_fp8.safetensors", strength=1.0)[0]
    latent = sample(pack, patched, conds, small_cond, steps=2)["samples"]
    assert torch.isfinite(latent).all() and (latent - quantized_latent).abs().max() > 1e-3
    assert all(is_quantized(m.weight) for m in block_linears(patched))  # ComfyUI requantizes the patched weights


@needs_mixed_ops
def test_partial_load_of_the_quantized_model_gives_the_full_load_latents(pack, conds, small_cond, scaled_fp8,
                                                                         quantized_latent, monkeypatch):
    model = load(pack, scaled_fp8)
    load_partially(monkeypatch, model)
    partial = sample(pack, model, conds, small_cond, steps=2)["samples"]
    assert model.model.model_lowvram and 0 < model.loaded_size() < model.model_size()
    assert any(getattr(m, "comfy_cast_weights", False) and is_quantized(m.weight) for m in block_linears(model))
    torch.testing.assert_close(partial, quantized_latent, atol=ATOL, rtol=0)
    model.unpatch_model(model.offload_device)


def test_without_mixed_ops_a_scaled_fp8_file_is_dequantized_and_a_mixed_one_refused(
        pack, models_dir, conds, small_cond, scaled_fp8, fp8_state, dequantized_latent, monkeypatch, caplog):
    """What ComfyUI before 0.4.0 does (and the stand-in): today's dequantizing reader."""
    monkeypatch.delattr(comfy.utils, "convert_old_quants", raising=False)
    with caplog.at_level(logging.WARNING):
        model = load(pack, scaled_fp8)
    assert "ComfyUI 0.4.0 or newer keeps it in fp8" in caplog.text
    assert all(type(m.weight) is torch.nn.Parameter and m.weight.dtype == torch.float32
               for m in block_linears(model))
    latent = sample(pack, model, conds, small_cond, steps=2)["samples"]
    torch.testing.assert_close(latent, dequantized_latent, atol=ATOL, rtol=0)
    state, metadata = fp8_state
    name = write_model(models_dir, "tiny_mixed_refused", state, {**metadata, "_quantization_metadata": "{}"})
    with pytest.raises(ValueError, match="mixed-precision format.*update ComfyUI to 0.4.0 or newer"):
        load(pack, name)


def test_with_mixed_ops_a_scaled_fp8_file_reaches_comfyuis_conversion_as_stored(pack, scaled_fp8, fp8_state,
                                                                               monkeypatch):
    """The kept-quantized path up to ComfyUI's own functions, in CI: the stand-in has no
    QuantizedTensor, so it gets ComfyUI 0.4.0's three names and the loader is stopped at the first.
    A scaled fp8 file reaches convert_old_quants with its float8 weights, scales and marker as
    stored (not dequantized) and the key prefix its marker sits under."""
    handed = {}

    class Handed(Exception):
        pass

    def convert_old_quants(state_dict, model_prefix="", metadata=None):
        handed.update(state=dict(state_dict), prefix=model_prefix)
        raise Handed

    monkeypatch.setattr(comfy.utils, "convert_old_quants", convert_old_quants, raising=False)
    monkeypatch.setattr(comfy.utils, "detect_layer_quantization", lambda state_dict, prefix: None, raising=False)
    monkeypatch.setattr(comfy.ops, "mixed_precision_ops", lambda *args, **kwargs: None, raising=False)
    with pytest.raises(Handed):
        load(pack, scaled_fp8)
    state, _ = fp8_state
    assert handed["prefix"] == PREFIX and PREFIX + "scaled_fp8" in handed["state"]
    stored = {key: value for key, value in state.items() if value.dtype == FP8 or key.endswith(".scale_weight")}
    assert len(stored) > 2

    def raw(tensor):  # float8 compared bit for bit
        return tensor.view(torch.uint8) if tensor.dtype == FP8 else tensor

    for key, value in stored.items():
        assert handed["state"][key].dtype == value.dtype and torch.equal(raw(handed["state"][key]), raw(value)), key
