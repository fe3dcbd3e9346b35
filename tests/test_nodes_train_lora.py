"""What core LoRA training needs from the pack, on the stand-in or a real ComfyUI: the MODEL
rebuilds itself the way core asks (cached_patcher_init with disable_dynamic), and files with core
Train LoRA's key names load through the pack's LoRA Loader and through core's own LoRA mapping.
Core Train LoRA itself runs in tests/test_comfy_train_lora.py (real ComfyUI only)."""

import inspect
import os

import comfy.lora
import comfy.model_management
import folder_paths
import pytest
import torch
from safetensors.torch import save_file

from droplet_core.loading import load_transformer
from droplet_core.lora import merge_loras
from lora_files import train_lora_layout
from node_fixtures import as_image, conds, image_cond, loaded, run, sample, start_image  # noqa: F401
from test_nodes_lora import core_nodes_module, on_device

TRAINED = "droplet_test_train_layout.safetensors"
SMALL = dict(width=64, height=64, frames=5)


@pytest.fixture(scope="module")
def small_i2v(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image), **SMALL)


@pytest.fixture(scope="module")
def trained_file(models_dir, loaded):
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(folder))  # a no-op on the stand-in
    tensors = train_lora_layout(loaded[0].model, seed=5)
    save_file(tensors, str(folder / TRAINED))
    return tensors


def test_core_deep_clone_rebuilds_the_model_and_samples_the_same_video(pack, loaded, conds, small_i2v):
    """core Train LoRA starts with clone(force_deepcopy=True): cached_patcher_init's factory is
    called with disable_dynamic=True and must give the same model again, not the same object."""
    model = loaded[0]
    if "force_deepcopy" not in inspect.signature(model.clone).parameters:
        pytest.skip("this ComfyUI (before 0.33) never rebuilds a MODEL in clone()")
    rebuilt = model.clone(force_deepcopy=True)
    assert rebuilt.model is not model.model and type(rebuilt.model) is type(model.model)
    assert rebuilt.cached_patcher_init == model.cached_patcher_init
    ours = sample(pack, model, conds, small_i2v, steps=2)["samples"]
    theirs = sample(pack, rebuilt, conds, small_i2v, steps=2)["samples"]
    assert torch.equal(ours, theirs)


def core_mapped(model, tensors):
    """The MODEL with the file's patches as core maps them: LoraLoaderModelOnly on a real ComfyUI,
    the stand-in's model_lora_keys_unet + load_lora otherwise."""
    if os.environ.get("COMFYUI_PATH"):
        return core_nodes_module().LoraLoaderModelOnly().load_lora_model_only(model, TRAINED, 1.0)[0]
    patches = comfy.lora.load_lora(tensors, comfy.lora.model_lora_keys_unet(model.model, {}))
    patched = model.clone()
    patched.add_patches(patches, 1.0)
    return patched


def test_train_lora_key_names_load_through_the_pack_and_core(pack, loaded, conds, small_i2v, trained_file):
    """Every tensor of a Train LoRA file is applied (LoRA factors, norm and bias differences), the
    same way by the pack's LoRA Loader and by core, and the video changes."""
    model = loaded[0]
    original = on_device(pack, model)
    ours = run(pack, "DropletVideoLoraLoader", model=model, lora_name=TRAINED, strength=1.0)[0]
    layers = {key.rpartition(".")[0].removesuffix(".lora_up").removesuffix(".lora_down") for key in trained_file}
    assert len(ours.patches) == len([k for k in trained_file if not k.endswith((".alpha", ".lora_down.weight"))])
    ours_weights, core_weights = on_device(pack, ours), on_device(pack, core_mapped(model, trained_file))
    changed = {k for k in original if not torch.equal(ours_weights[k], original[k])}
    assert {f"diffusion_model.{k}".rpartition(".")[0] for k in changed} == layers
    for k in original:
        torch.testing.assert_close(core_weights[k], ours_weights[k], atol=1e-6, rtol=0, msg=k)
    plain = sample(pack, model, conds, small_i2v, steps=2)["samples"]
    with_lora = sample(pack, ours, conds, small_i2v, steps=2)["samples"]
    assert (with_lora - plain).abs().max() > 1e-3
    on_device(pack, model)


def test_a_train_lora_difference_of_the_wrong_size_is_refused_by_name(pack, loaded, models_dir, trained_file):
    tensors = dict(trained_file)
    tensors["diffusion_model.norm_final.diff"] = torch.zeros(7)
    save_file(tensors, str(models_dir / "loras" / "droplet_test_train_wide.safetensors"))
    with pytest.raises(ValueError, match="difference for norm_final.weight is \\(7,\\).*another size"):
        run(pack, "DropletVideoLoraLoader", model=loaded[0], lora_name="droplet_test_train_wide.safetensors",
            strength=1.0)


def test_conditioning_options_are_flat_tensors_and_numbers(pack, loaded, conds, small_i2v):
    """Core walks conditioning options (Train LoRA's process_cond_list recurses into every list and
    tuple down to 0-d tensors, and fails there), so the pack stores only tensors and numbers."""
    node, inputs = small_i2v
    positive, negative, _ = run(pack, node, positive=conds[0], negative=conds[1], fps=8, **inputs)
    for entry in (*positive, *negative):
        for name, value in entry[1].items():
            assert isinstance(value, (torch.Tensor, int, float)), f"{name} is a {type(value).__name__}"


def test_the_engine_merges_a_train_lora_file_as_the_lora_loader_patches_it(pack, loaded, models_dir, trained_file):
    """The CLI/engine path (droplet_core.lora.merge_loras) reads core Train LoRA files too: LoRA
    factors (the patch embedding's convolution included), norm and bias differences."""
    transformer = load_transformer(models_dir / "DropletVideo" / "tiny" / "transformer")
    assert merge_loras(transformer, [(str(models_dir / "loras" / TRAINED), 0.8)]) == []
    patched = on_device(pack, run(pack, "DropletVideoLoraLoader", model=loaded[0], lora_name=TRAINED,
                                  strength=0.8)[0])
    merged = transformer.state_dict()
    assert merged.keys() == patched.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], patched[k], atol=1e-6, rtol=0, msg=k)
    on_device(pack, loaded[0])
