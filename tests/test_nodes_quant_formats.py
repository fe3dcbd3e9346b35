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

from node_fixtures import run
from quant_files import (TEST_BLOCKS, VIDEO, forward, forward_inputs, medium_release_file, quantized_file, short_video,
                         video_conditioning)

quant_ops = pytest.importorskip("comfy.quant_ops", reason="needs a real ComfyUI (COMFYUI_PATH) with quant_ops")
if not hasattr(quant_ops.QuantizedTensor, "from_float"):
    pytest.skip("comfy-kitchen is not installed in this ComfyUI's environment", allow_module_level=True)
FORMATS = list(quant_ops.QUANT_ALGOS)
FOUR_BIT = next(f for f in ("nvfp4", "convrot_w4a4", "asym_w4a8_int8") if f in FORMATS)


@pytest.fixture(scope="module")
def writer(pack):
    return importlib.import_module(pack.__name__ + ".nodes.quantized_writer")


def load(pack, name: str, precision: str = "bf16"):
    return run(pack, "DropletVideoTransformerLoader", transformer_name=name, precision=precision)[0]


def layers_of(model):
    return dict(model.model.diffusion_model.named_modules())


def layer_formats(models_dir, name: str) -> dict:
    with safe_open(str(models_dir / "diffusion_models" / name), framework="pt") as handle:
        return json.loads(handle.metadata()["_quantization_metadata"])["layers"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_as_cores_own_quantize_and_stays_quantized(pack, models_dir, writer, fmt):
    name = quantized_file(writer, models_dir, fmt)
    source = load_file(str(medium_release_file(models_dir, TEST_BLOCKS)))
    formats = layer_formats(models_dir, name)
    assert len(formats) == 6 * TEST_BLOCKS and all(f["format"] == fmt for f in formats.values())  # 6 Linears a block
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
    bf16 = load(pack, medium_release_file(models_dir, TEST_BLOCKS).name)
    assert model.model_size() < 0.8 * bf16.model_size()


def test_the_file_holds_config_kind_formats_and_source_hash(models_dir, writer):
    name = quantized_file(writer, models_dir, "float8_e4m3fn")
    with safe_open(str(models_dir / "diffusion_models" / name), framework="pt") as handle:
        metadata = handle.metadata()
    source = medium_release_file(models_dir, TEST_BLOCKS)
    with safe_open(str(source), framework="pt") as handle:
        source_config = json.loads(handle.metadata()["config"])
    written = json.loads(metadata["config"])
    assert written["num_layers"] == source_config["num_layers"] == TEST_BLOCKS
    assert written["num_attention_heads"] == source_config["num_attention_heads"] and written["_class_name"]
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
    bf16 = load(pack, medium_release_file(models_dir, TEST_BLOCKS).name).model.diffusion_model
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


def test_partial_load_of_a_4bit_file_gives_the_full_load_forward(pack, models_dir, writer):
    model = load(pack, quantized_file(writer, models_dir, FOUR_BIT))
    inputs = forward_inputs(model)
    full = forward(model, inputs)
    model.patch_model(model.load_device, lowvram_model_memory=model.model_size() * 2 // 3)  # ComfyUI's lowvram load
    assert model.model.model_lowvram and 0 < model.loaded_size() < model.model_size()
    torch.testing.assert_close(forward(model, inputs), full, rtol=0, atol=0)
    model.unpatch_model(model.offload_device)


# Bad input: each refused by name with its fix, from the header, before any tensor is read.
def rewritten(models_dir, name: str, new_name: str, edit_tensors=None, edit_metadata=None) -> str:
    path = models_dir / "diffusion_models" / name
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = edit_tensors(tensors) if edit_tensors else tensors
    metadata = edit_metadata(metadata) if edit_metadata else metadata
    save_file(tensors, str(models_dir / "diffusion_models" / new_name), metadata=metadata)
    return new_name


@pytest.fixture
def refused_early(pack, monkeypatch):
    """Fails the test if the loader reads the tensors of a file it should have refused."""
    loading = importlib.import_module(pack.__name__ + ".nodes.native.loading")

    def read_quantized(*args, **kwargs):
        raise AssertionError("the tensors were read before the file was checked")

    monkeypatch.setattr(loading, "read_quantized", read_quantized)


def still_loads(pack, models_dir, writer):
    """After a refusal the server goes on: a good file loads quantized."""
    model = load(pack, quantized_file(writer, models_dir, "float8_e4m3fn"))
    assert isinstance(layers_of(model)["transformer_blocks.0.attn1.to_q"].weight, quant_ops.QuantizedTensor)


def test_a_dropped_scale_is_refused(pack, models_dir, writer, refused_early, monkeypatch):
    layer = "transformer_blocks.1.ff.net.2"
    for fmt in ("float8_e4m3fn", FOUR_BIT):
        name = quantized_file(writer, models_dir, fmt)
        scales = [k for k in load_file(str(models_dir / "diffusion_models" / name)) if k.startswith(f"{layer}.weight_")]
        assert scales, fmt
        for key in scales:  # each of the format's scales (nvfp4: the block and the per-tensor one)
            dropped = rewritten(models_dir, name, f"no_scale_{fmt}.safetensors",
                                edit_tensors=lambda tensors: {k: v for k, v in tensors.items() if k != key})
            with pytest.raises(ValueError, match=f"no {key} tensor: its scale was dropped"):
                load(pack, dropped)
    monkeypatch.undo()  # the loader reads tensors again
    still_loads(pack, models_dir, writer)


def test_metadata_disagreeing_with_tensors_is_refused(pack, models_dir, writer, refused_early, monkeypatch):
    fp8 = quantized_file(writer, models_dir, "float8_e4m3fn")
    layer = "transformer_blocks.1.attn1.to_v"

    def relabel(metadata):
        record = json.loads(metadata["_quantization_metadata"])
        record["layers"][layer] = {"format": FOUR_BIT}
        return {**metadata, "_quantization_metadata": json.dumps(record)}

    with pytest.raises(ValueError, match=f"_quantization_metadata says layer '{layer}' is .*{FOUR_BIT}.*comfy_quant"):
        load(pack, rewritten(models_dir, fp8, "relabelled.safetensors", edit_metadata=relabel))

    def other_config(metadata):  # a config with twice the heads of half the size: same inner width
        config = json.loads(metadata["config"])
        config.update(num_attention_heads=16, attention_head_dim=32)
        return {**metadata, "config": json.dumps(config)}

    with pytest.raises(ValueError, match="attention_head_dim"):
        load(pack, rewritten(models_dir, fp8, "other_config.safetensors", edit_metadata=other_config))

    def wider_ff(tensors):  # the config's feed-forward is 4x; a file whose packed ff.net.2 claims 3x
        key = "transformer_blocks.1.ff.net.2.weight"
        return {**tensors, key: tensors[key][:, : tensors[key].shape[1] * 3 // 4].contiguous()}

    with pytest.raises(ValueError, match="ff.net.2.weight is F8_E4M3 .*disagrees with the tensors"):
        load(pack, rewritten(models_dir, fp8, "wrong_shape.safetensors", edit_tensors=wider_ff))
    monkeypatch.undo()
    still_loads(pack, models_dir, writer)


def test_a_truncated_quantized_file_is_refused(pack, models_dir, writer):
    good = models_dir / "diffusion_models" / quantized_file(writer, models_dir, FOUR_BIT)
    cut = models_dir / "diffusion_models" / "truncated.safetensors"
    cut.write_bytes(good.read_bytes()[:-4096])
    with pytest.raises(ValueError, match="is incomplete.*re-download"):
        load(pack, cut.name)
    still_loads(pack, models_dir, writer)


def test_a_file_quantized_for_another_model_is_refused(pack, models_dir, writer, refused_early, monkeypatch):
    other = {"blocks.0.self_attn.q.weight": torch.zeros(64, 64, dtype=torch.float8_e4m3fn),
             "blocks.0.self_attn.q.weight_scale": torch.ones(()),
             "blocks.0.self_attn.q.comfy_quant": torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8),
             "patch_embedding.weight": torch.zeros(64, 16, 1, 2, 2, dtype=torch.bfloat16)}
    save_file(other, str(models_dir / "diffusion_models" / "wan_like_fp8.safetensors"))
    with pytest.raises(ValueError, match="not a DropletVideo/CogVideoX transformer"):
        load(pack, "wan_like_fp8.safetensors")
    three_d = rewritten(models_dir, quantized_file(writer, models_dir, "float8_e4m3fn"), "droplet3d_fp8.safetensors",
                        edit_tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("fps_embedding.")},
                        edit_metadata=lambda m: {**m, "droplet_model_kind": "Droplet3D"})
    with pytest.raises(ValueError, match="quantized Droplet3D transformer, not DropletVideo"):
        load(pack, three_d)
    monkeypatch.undo()
    still_loads(pack, models_dir, writer)


def test_a_format_this_comfyui_lacks_is_refused_with_the_version_that_has_it(pack, models_dir, writer, monkeypatch,
                                                                           refused_early):
    """ComfyUI 0.8.0's QUANT_ALGOS has float8 and nvfp4 only: an int8 file names 0.33.0."""
    if "int8_tensorwise" not in FORMATS:
        pytest.skip("this ComfyUI cannot write int8_tensorwise")
    name = quantized_file(writer, models_dir, "int8_tensorwise")
    monkeypatch.setattr(quant_ops, "QUANT_ALGOS", {k: v for k, v in quant_ops.QUANT_ALGOS.items()
                                                   if k in ("float8_e4m3fn", "float8_e5m2", "nvfp4")})
    with pytest.raises(ValueError, match="int8_tensorwise, which this ComfyUI .* update ComfyUI to 0.33.0 or newer"):
        load(pack, name)


# The table's video RMSE against bf16 (docs/quantization.md, bench/quant_table.py on ComfyUI 0.33.0):
# medium checkpoint (8 blocks), image-to-video at quant_files.VIDEO (64x64, 5 frames, 3 DDIM steps, CFG 6,
# seed 42, fp32 compute).
TABLE_RMSE = {"float8_e4m3fn": 0.00314, "nvfp4": 0.00781}
VIDEO_FORMATS = [f for f in ("float8_e4m3fn", FOUR_BIT) if f in TABLE_RMSE]


@pytest.fixture(scope="module")
def medium_video(pack, models_dir):
    """(bf16 file's frames, the medium checkpoint's VAE and prompt conditioning) as the table made them."""
    release = medium_release_file(models_dir, 8)  # also writes DropletVideo/medium, the VAE and T5's folder
    vae, conds = video_conditioning(pack)
    with torch.inference_mode():
        frames, _ = short_video(pack, load(pack, release.name, VIDEO["precision"]), vae, conds)
    return frames, vae, conds


@pytest.mark.parametrize("fmt", VIDEO_FORMATS)
def test_a_video_from_a_quantized_file_stays_within_the_tables_distance_of_bf16(pack, models_dir, writer,
                                                                                 medium_video, fmt):
    reference, vae, conds = medium_video
    with torch.inference_mode():
        model = load(pack, quantized_file(writer, models_dir, fmt, blocks=8), VIDEO["precision"])
        frames, _ = short_video(pack, model, vae, conds)
    rmse = float(((frames - reference) ** 2).mean().sqrt())
    assert 0 < rmse < 1.5 * TABLE_RMSE[fmt], rmse  # fixed in advance: 1.5x the table's figure
