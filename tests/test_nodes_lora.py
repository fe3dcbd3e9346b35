"""DropletVideoLoraLoader: its patches equal the engine's merge, they come off again, they stack;
and the ModelPatcher contract it relies on (clone, add_patches, patch on load_models_gpu,
restore when another clone loads), checked on the stand-in or on a real ComfyUI."""

import importlib
import logging
import os
from pathlib import Path

import folder_paths
import pytest
import torch
from safetensors.torch import save_file

from droplet_core.lora import lora_deltas, merge_loras, read_lora
from lora_files import random_factors, write_kohya, write_peft
from node_fixtures import (ATOL, as_image, conds, engine_latent, image_cond, load_engine, loaded, run,  # noqa: F401
                           sample, start_image)

LORA_ATOL = 1e-5
PEFT, KOHYA = "droplet_test_peft.safetensors", "droplet_test_kohya.safetensors"


@pytest.fixture(scope="module")
def loras(models_dir, loaded) -> Path:
    """The loras folder (registered in ComfyUI) with a peft-style and a kohya-style LoRA."""
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(folder))  # a no-op on the stand-in
    transformer = loaded[0].patcher.model.module
    write_peft(folder / PEFT, random_factors(transformer, seed=1), alpha=2.0)
    write_kohya(folder / KOHYA, random_factors(transformer, seed=2), alpha=8.0)
    return folder


@pytest.fixture(scope="module")
def i2v_cond(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image))


@pytest.fixture(scope="module")
def original(pack, loaded, conds, i2v_cond):
    """The un-LoRA'd model's weights and LATENT, taken before any LoRA test runs."""
    weights = {k: v.clone() for k, v in loaded[0].patcher.model.state_dict().items()}
    return weights, sample(pack, loaded[0], conds, i2v_cond)["samples"]


def with_lora(pack, model, name, strength):
    return run(pack, "DropletVideoLoraLoader", model=model, lora_name=name, strength=strength)[0]


def merged_engine_latent(models_dir, start_image, loras_and_strengths):
    engine = load_engine(models_dir)
    merge_loras(engine.transformer, [(str(path), s) for path, s in loras_and_strengths])
    return engine_latent(engine, image=start_image)


def test_lora_equals_the_engine_merge_and_comes_off_again(pack, loaded, conds, i2v_cond, loras, original,
                                                          models_dir, start_image):
    weights, plain = original
    model = with_lora(pack, loaded[0], PEFT, 0.8)
    assert model.patcher is not loaded[0].patcher and model.patcher.model is loaded[0].patcher.model
    layers = read_lora(loras / PEFT, loaded[0].patcher.model.module).layers
    assert not loaded[0].patcher.patches and set(model.patcher.patches) == {f"module.{n}.weight" for n in layers}
    latent = sample(pack, model, conds, i2v_cond)["samples"]
    expected = merged_engine_latent(models_dir, start_image, [(loras / PEFT, 0.8)])
    torch.testing.assert_close(latent, expected, atol=LORA_ATOL, rtol=0)
    assert (latent - plain).abs().max() > 0.05  # the LoRA changes the video

    holder = loaded[0].patcher.model
    again = sample(pack, loaded[0], conds, i2v_cond)["samples"]  # the original model, no reload
    assert loaded[0].patcher.model is holder
    torch.testing.assert_close(again, plain, atol=ATOL, rtol=0)
    assert all(torch.equal(v.cpu(), weights[k].cpu()) for k, v in holder.state_dict().items())

    assert with_lora(pack, loaded[0], PEFT, 0.0) is loaded[0]  # strength 0: the model as it was


def test_stacked_loaders_equal_merging_both(pack, loaded, conds, i2v_cond, loras, original, models_dir,
                                            start_image):
    first = with_lora(pack, loaded[0], PEFT, 0.5)
    stacked = with_lora(pack, first, KOHYA, -0.7)
    key = "module.transformer_blocks.0.attn1.to_q.weight"
    assert len(first.patcher.patches[key]) == 1 and len(stacked.patcher.patches[key]) == 2
    latent = sample(pack, stacked, conds, i2v_cond)["samples"]
    expected = merged_engine_latent(models_dir, start_image, [(loras / PEFT, 0.5), (loras / KOHYA, -0.7)])
    torch.testing.assert_close(latent, expected, atol=LORA_ATOL, rtol=0)


# ModelPatcher: what ComfyUI's model management does with the patches ------------------------------------

def on_device(pack, model):
    components = importlib.import_module(f"{pack.__name__}.nodes.components")
    components.load_for_compute(model.patcher, 0)
    return {k: v.cpu() for k, v in model.patcher.model.state_dict().items()}


def patched(weights, deltas):
    """The holder's state dict (keys module.<param>) plus {param: delta}."""
    return {k: v + deltas[k[len("module."):]].to(v.device) if k[len("module."):] in deltas else v
            for k, v in weights.items()}


def lora_delta(transformer, path, strength):
    return lora_deltas(read_lora(path, transformer), transformer, strength)


def test_model_management_patches_on_load_and_restores(pack, loaded, loras, original):
    weights, _ = original
    transformer = loaded[0].patcher.model.module
    one = lora_delta(transformer, loras / PEFT, 1.5)
    two = lora_delta(transformer, loras / KOHYA, 0.25)
    first = with_lora(pack, loaded[0], PEFT, 1.5)
    stacked = with_lora(pack, first, KOHYA, 0.25)
    both = {k: one[k] + two[k] for k in one}
    for model, expected in ((first, patched(weights, one)), (loaded[0], weights), (stacked, patched(weights, both)),
                            (first, patched(weights, one)), (loaded[0], weights)):
        got = on_device(pack, model)
        assert got.keys() == expected.keys()
        for k in got:
            torch.testing.assert_close(got[k], expected[k].cpu(), atol=LORA_ATOL, rtol=0, msg=k)


@pytest.mark.skipif(bool(os.environ.get("COMFYUI_PATH")), reason="this ComfyUI has comfy.weight_adapter")
def test_comfyui_before_weight_adapter_gets_legacy_tuples(pack, loaded, loras, original, monkeypatch):
    node = importlib.import_module(f"{pack.__name__}.nodes.lora_loader")
    monkeypatch.setattr(node, "LoRAAdapter", None)
    model = with_lora(pack, loaded[0], PEFT, 1.5)
    assert next(iter(model.patcher.patches.values()))[0][1][0] == "lora"
    delta = lora_delta(loaded[0].patcher.model.module, loras / PEFT, 1.5)
    got = on_device(pack, model)
    for k, v in patched(original[0], delta).items():
        torch.testing.assert_close(got[k], v.cpu(), atol=LORA_ATOL, rtol=0)
    on_device(pack, loaded[0])


def test_lora_errors_name_the_fix(pack, loaded, loras, caplog):
    with caplog.at_level(logging.WARNING):
        with_lora(pack, loaded[0], PEFT, 1.0)
    assert f"1 keys of {PEFT} match no layer" in caplog.text
    with pytest.raises(ValueError, match="'missing.safetensors' was not found in ComfyUI's 'loras' folders"):
        with_lora(pack, loaded[0], "missing.safetensors", 1.0)
    save_file({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 8)},
              str(loras / "droplet_test_sd.safetensors"))
    with pytest.raises(ValueError, match="no key of this LoRA matches"):
        with_lora(pack, loaded[0], "droplet_test_sd.safetensors", 1.0)
    save_file({"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(loras / "droplet_test_wide.safetensors"))
    with pytest.raises(ValueError, match="to_q: up \\(64, 4\\) x down \\(4, 64\\) does not fit the weight"):
        with_lora(pack, loaded[0], "droplet_test_wide.safetensors", 1.0)
