"""DropletVideoLoraLoader on the native MODEL: its patches equal the engine's merge, they come off
again, they stack, core LoraLoaderModelOnly gives the same model; and the ModelPatcher contract
it relies on (clone, add_patches, patch on load_models_gpu, restore when another clone loads),
checked on the stand-in or on a real ComfyUI."""

import os
from pathlib import Path

import comfy.model_management
import folder_paths
import pytest
import torch
from safetensors.torch import load_file, save_file

from droplet_core.lora import lora_deltas, merge_loras, read_lora
from lora_files import random_factors, write_kohya, write_peft
from node_fixtures import (ATOL, as_image, conds, core_nodes_module, engine_latent, image_cond, load_engine,  # noqa: F401
                           loaded, run, sample, start_image)

LORA_ATOL = 2e-5  # fp32 sum order of core's patching vs the merged weights (1.24e-5 seen on ComfyUI 0.33)
PEFT, KOHYA = "droplet_test_peft.safetensors", "droplet_test_kohya.safetensors"


@pytest.fixture(scope="module")
def loras(models_dir, loaded) -> Path:
    """The loras folder (registered in ComfyUI) with a peft-style and a kohya-style LoRA."""
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(folder))  # a no-op on the stand-in
    transformer = loaded[0].model.diffusion_model
    write_peft(folder / PEFT, random_factors(transformer, seed=1), alpha=2.0)
    write_kohya(folder / KOHYA, random_factors(transformer, seed=2), alpha=8.0)
    return folder


@pytest.fixture(scope="module")
def i2v_cond(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image))


@pytest.fixture(scope="module")
def original(pack, loaded, conds, i2v_cond):
    """The un-LoRA'd model's weights and LATENT, taken before any LoRA test runs."""
    weights = {k: v.clone() for k, v in loaded[0].model.diffusion_model.state_dict().items()}
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
    assert model is not loaded[0] and model.model is loaded[0].model
    layers = read_lora(loras / PEFT, loaded[0].model.diffusion_model).layers
    assert not loaded[0].patches and set(model.patches) == {f"diffusion_model.{n}.weight" for n in layers}
    latent = sample(pack, model, conds, i2v_cond)["samples"]
    expected = merged_engine_latent(models_dir, start_image, [(loras / PEFT, 0.8)])
    torch.testing.assert_close(latent, expected, atol=LORA_ATOL, rtol=0)
    assert (latent - plain).abs().max() > 0.05  # the LoRA changes the video

    holder = loaded[0].model
    again = sample(pack, loaded[0], conds, i2v_cond)["samples"]  # the original model, no reload
    assert loaded[0].model is holder
    torch.testing.assert_close(again, plain, atol=ATOL, rtol=0)
    assert all(torch.equal(v.cpu(), weights[k].cpu()) for k, v in holder.diffusion_model.state_dict().items())

    assert with_lora(pack, loaded[0], PEFT, 0.0) is loaded[0]  # strength 0: the model as it was


def test_stacked_loaders_equal_merging_both(pack, loaded, conds, i2v_cond, loras, original, models_dir,
                                            start_image):
    first = with_lora(pack, loaded[0], PEFT, 0.5)
    stacked = with_lora(pack, first, KOHYA, -0.7)
    key = "diffusion_model.transformer_blocks.0.attn1.to_q.weight"
    assert len(first.patches[key]) == 1 and len(stacked.patches[key]) == 2
    latent = sample(pack, stacked, conds, i2v_cond)["samples"]
    expected = merged_engine_latent(models_dir, start_image, [(loras / PEFT, 0.5), (loras / KOHYA, -0.7)])
    torch.testing.assert_close(latent, expected, atol=LORA_ATOL, rtol=0)


# ModelPatcher: what ComfyUI's model management does with the patches ------------------------------------

def on_device(pack, model):
    comfy.model_management.load_models_gpu([model])
    return {k: v.cpu() for k, v in model.model.diffusion_model.state_dict().items()}


def patched(weights, deltas):
    """The diffusion model's state dict plus {param: delta}."""
    return {k: v + deltas[k].to(v.device) if k in deltas else v for k, v in weights.items()}


def lora_delta(transformer, path, strength):
    return lora_deltas(read_lora(path, transformer), transformer, strength)


def test_model_management_patches_on_load_and_restores(pack, loaded, loras, original):
    weights, _ = original
    transformer = loaded[0].model.diffusion_model
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


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="core LoraLoaderModelOnly needs a real ComfyUI")
@pytest.mark.parametrize("name", [PEFT, KOHYA])
def test_core_lora_loader_gives_the_same_model_as_the_pack(pack, loaded, loras, name):
    """Core maps kohya (lora_unet_…) keys itself; diffusers/peft (transformer.…) keys only through
    the pack's loader, so the peft file is first written with ComfyUI's diffusion_model. names."""
    core_nodes = core_nodes_module()
    tensors = load_file(str(loras / name))
    if name == PEFT:
        name = "droplet_test_peft_comfy.safetensors"
        save_file({k.replace("transformer.", "diffusion_model.", 1): v for k, v in tensors.items()}, str(loras / name))
    ours = on_device(pack, with_lora(pack, loaded[0], PEFT if name.startswith("droplet_test_peft") else name, 0.6))
    core = core_nodes.LoraLoaderModelOnly().load_lora_model_only(loaded[0], name, 0.6)[0]
    theirs = on_device(pack, core)
    for k in ours:
        torch.testing.assert_close(theirs[k], ours[k], atol=1e-5, rtol=0, msg=k)
    on_device(pack, loaded[0])


def test_lora_errors_name_the_fix(pack, loaded, loras):
    with pytest.raises(ValueError, match="'missing.safetensors' was not found in ComfyUI's 'loras' folders"):
        with_lora(pack, loaded[0], "missing.safetensors", 1.0)
    transformer = loaded[0].model.diffusion_model
    write_peft(loras / "droplet_test_stray.safetensors", random_factors(transformer, seed=3), stray_key=True)
    with pytest.raises(ValueError, match="1 of its .* keys match no layer .*transformer.not_a_layer.lora_A.weight"):
        with_lora(pack, loaded[0], "droplet_test_stray.safetensors", 1.0)
    save_file({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 8)},
              str(loras / "droplet_test_sd.safetensors"))
    with pytest.raises(ValueError, match="match no layer of this DropletVideo transformer.*made for another model"):
        with_lora(pack, loaded[0], "droplet_test_sd.safetensors", 1.0)
    save_file({"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
               "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(loras / "droplet_test_wide.safetensors"))
    with pytest.raises(ValueError, match="to_q: up \\(64, 4\\) x down \\(4, 64\\) does not fit the weight"):
        with_lora(pack, loaded[0], "droplet_test_wide.safetensors", 1.0)
    factors = random_factors(transformer, seed=4)
    factors["transformer_blocks.0.attn1.to_q"][0][0, 0] = float("nan")
    write_peft(loras / "droplet_test_nan.safetensors", factors)
    with pytest.raises(ValueError, match="droplet_test_nan.safetensors: LoRA tensor .*to_q.lora_A.weight' holds NaN/inf"):
        with_lora(pack, loaded[0], "droplet_test_nan.safetensors", 1.0)


def test_a_lora_whose_factors_disagree_in_rank_is_refused_by_name(pack, loaded, loras):
    """lora_A 4 x in with lora_B out x 8: ComfyUI would log the failed product and run without the layer."""
    width = loaded[0].model.diffusion_model.transformer_blocks[0].attn1.to_q.in_features
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, width),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(width, 8)},
              str(loras / "droplet_test_ranks.safetensors"))
    with pytest.raises(ValueError, match=f"'droplet_test_ranks.safetensors', layer transformer_blocks.0.attn1.to_q: "
                                         f"up \\({width}, 8\\) has rank 8 but down \\(4, {width}\\) has rank 4"):
        with_lora(pack, loaded[0], "droplet_test_ranks.safetensors", 1.0)
