"""Quantized transformer files written by the pack (DropletVideo Save Quantized) in each format the
host's comfy.quant_ops offers, read back by the Transformer Loader: the same dequantized weights
as core's own quantize of the same tensor, kept quantized in memory, LoRA and partial loading on
a 4-bit file, and each bad file refused with its fix before anything is loaded.

Real ComfyUI only (COMFYUI_PATH, with comfy-kitchen): the stand-in has no quantized formats. The
model is the medium checkpoint in bf16 (tests/quant_files.py)."""

import importlib
import json

import comfy.model_management
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from node_fixtures import load_partially, run
from quant_files import medium_release_file, quantized_file

quant_ops = pytest.importorskip("comfy.quant_ops", reason="needs a real ComfyUI (COMFYUI_PATH) with quant_ops")
if not hasattr(quant_ops.QuantizedTensor, "from_float"):
    pytest.skip("comfy-kitchen is not installed in this ComfyUI's environment", allow_module_level=True)
FORMATS = list(quant_ops.QUANT_ALGOS)
FOUR_BIT = next(f for f in ("nvfp4", "convrot_w4a4", "asym_w4a8_int8") if f in FORMATS)


@pytest.fixture(scope="module")
def writer(pack):
    return importlib.import_module(pack.__name__ + ".nodes.quantized_writer")


def load(pack, name: str):
    return run(pack, "DropletVideoTransformerLoader", transformer_name=name, precision="bf16")[0]


def layers_of(model):
    return dict(model.model.diffusion_model.named_modules())


def layer_formats(models_dir, name: str) -> dict:
    with safe_open(str(models_dir / "diffusion_models" / name), framework="pt") as handle:
        return json.loads(handle.metadata()["_quantization_metadata"])["layers"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_as_cores_own_quantize_and_stays_quantized(pack, models_dir, writer, fmt):
    name = quantized_file(writer, models_dir, fmt)
    source = load_file(str(medium_release_file(models_dir)))
    formats = layer_formats(models_dir, name)
    assert len(formats) == 48 and all(f["format"] == fmt for f in formats.values())  # 8 blocks x 6 Linears
    model = load(pack, name)
    layers = layers_of(model)
    layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    for layer in formats:
        weight = layers[layer].weight
        assert isinstance(weight, quant_ops.QuantizedTensor) and weight._layout_cls == layout, layer  # not expanded
        own = quant_ops.QuantizedTensor.from_float(source[f"{layer}.weight"], layout)
        assert torch.equal(weight._qdata, own._qdata), layer
        torch.testing.assert_close(weight.dequantize().float(), own.dequantize().float(), rtol=0, atol=0)
    for kept in ("proj_out", "patch_embed.proj", "time_embedding.linear_1", "fps_embedding.linear_2",
                 "transformer_blocks.0.norm1.linear", "norm_out.linear"):
        assert torch.equal(layers[kept].weight, source[f"{kept}.weight"]), kept  # bf16 as stored
    bf16 = load(pack, medium_release_file(models_dir).name)
    assert model.model_size() < 0.8 * bf16.model_size()


def test_the_file_holds_config_kind_formats_and_source_hash(models_dir, writer):
    name = quantized_file(writer, models_dir, "float8_e4m3fn")
    with safe_open(str(models_dir / "diffusion_models" / name), framework="pt") as handle:
        metadata = handle.metadata()
    source = medium_release_file(models_dir)
    with safe_open(str(source), framework="pt") as handle:
        source_config = json.loads(handle.metadata()["config"])
    assert json.loads(metadata["config"])["num_layers"] == source_config["num_layers"] == 8
    assert metadata["droplet_model_kind"] == "DropletVideo"
    record = json.loads(metadata["droplet_quantization"])
    import hashlib
    assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["format"] == "float8_e4m3fn" and "ComfyUI" in record["host"]


def test_quantizing_the_modulation_is_an_option(models_dir, writer):
    formats = layer_formats(models_dir, quantized_file(writer, models_dir, "float8_e4m3fn", quantize_modulation=True))
    assert "transformer_blocks.0.norm1.linear" in formats and "norm_out.linear" not in formats


def test_a_lora_on_a_4bit_file_is_applied_and_requantized(pack, models_dir, writer):
    """Core dequantizes the layer, adds the LoRA and quantizes again: the weight stays a
    QuantizedTensor and moves by the LoRA's up @ down (up to the format's rounding)."""
    from lora_files import random_factors, write_peft

    model = load(pack, quantized_file(writer, models_dir, FOUR_BIT))
    bf16 = load(pack, medium_release_file(models_dir).name).model.diffusion_model
    factors = random_factors(bf16, 5)  # the bf16 model's Linears are torch Linears; the quantized ones are not
    write_peft(models_dir / "loras" / "droplet_test_4bit.safetensors", factors)
    patched = run(pack, "DropletVideoLoraLoader", model=model, lora_name="droplet_test_4bit.safetensors",
                  strength=1.0)[0]
    layer = "transformer_blocks.0.attn1.to_q"
    before = layers_of(model)[layer].weight.dequantize().float()
    patched.patch_model(comfy.model_management.get_torch_device())
    try:
        weight = layers_of(patched)[layer].weight
        assert isinstance(weight, quant_ops.QuantizedTensor)  # requantized, not expanded
        down, up = factors[layer]
        change = weight.dequantize().float().cpu() - before.cpu()
        assert torch.nn.functional.cosine_similarity(change.flatten(), (up @ down).flatten(), dim=0) > 0.9
    finally:
        patched.unpatch_model(patched.offload_device)
    assert torch.equal(layers_of(model)[layer].weight.dequantize().float(), before)  # unpatched as loaded


def test_partial_load_of_a_4bit_file_gives_the_full_load_forward(pack, models_dir, writer, monkeypatch):
    model = load(pack, quantized_file(writer, models_dir, FOUR_BIT))
    inputs = forward_inputs(model)
    full = forward(model, inputs)
    load_partially(monkeypatch, model)
    comfy.model_management.load_models_gpu([model])
    assert model.model.model_lowvram and 0 < model.loaded_size() < model.model_size()
    torch.testing.assert_close(forward(model, inputs), full, rtol=0, atol=0)
    model.unpatch_model(model.offload_device)


def forward_inputs(model, frames: int = 2, size: int = 16):
    """Fixed random inputs of one transformer call ([B, F, C, H, W] latents, text, timestep, fps)."""
    config = model.model.diffusion_model.config
    generator = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, frames, config.noise_channels, size, size, generator=generator),
                encoder_hidden_states=torch.randn(1, 8, config.text_embed_dim, generator=generator),
                timestep=torch.tensor([500]), fps=torch.tensor([8]),
                inpaint_latents=torch.randn(1, frames, config.in_channels - config.noise_channels, size, size,
                                            generator=generator))


@torch.no_grad()
def forward(model, inputs):
    device, dtype = model.load_device, model.model.manual_cast_dtype or torch.bfloat16
    cast = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    return model.model.diffusion_model.predict(**cast).float().cpu()
