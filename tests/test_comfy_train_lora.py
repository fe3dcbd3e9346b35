"""Core Train LoRA on the DropletVideo MODEL, end to end (real ComfyUI only: set COMFYUI_PATH).

Two short clips with their image-to-video conditioning (FPS and the start frame's concat
channels) train a LoRA with core *Train LoRA*; core *Save LoRA* writes it; core
LoraLoaderModelOnly and the pack's LoRA Loader both load the file (core Load LoRA Model takes its
tensors), give the same weights, and change the video."""

import importlib
import os
import shutil

import folder_paths
import pytest
import torch
from PIL import ImageOps
from safetensors.torch import load_file

from droplet_core.positional import fps_tensor
from lora_files import train_lora_layout
from node_fixtures import as_image, conds, loaded, run, sample, start_image  # noqa: F401
from test_nodes_lora import core_nodes_module, on_device

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="core Train LoRA needs a real ComfyUI")

SMALL = dict(width=64, height=64, frames=5)
FPS = 8
STEPS = 4


def clip(image, shift):
    """A 5-frame clip [F, H, W, 3]: the image sliding `shift` pixels a frame."""
    frame = as_image(image.resize((SMALL["width"], SMALL["height"])))
    return torch.cat([torch.roll(frame, i * shift, dims=2) for i in range(SMALL["frames"])])


def clip_inputs(pack, loaded, conds, frames):
    """(positive conditioning, LATENT) of one clip: Image Encode on its first frame, VAE Encode of its frames."""
    positive = run(pack, "DropletVideoImageEncode", positive=conds[0], negative=conds[1], vae=loaded[1], **SMALL,
                   fps=FPS, resize_mode="stretch", noise_augmentation=False, noise_aug_strength=0.0563,
                   noise_aug_seed=42, vae_tiling=False, start_image=frames[:1])[0]
    latent = run(pack, "DropletVideoVAEEncode", vae=loaded[1], image=frames, tiling=False, seed=1)[0]
    return positive, latent


def train_inputs(node, **overrides):
    """Every input of core TrainLoraNode at its default (the input names differ between ComfyUI
    versions), as the lists an is_input_list node gets, with `overrides`."""
    values = {spec.id: getattr(spec, "default", None) for spec in node.define_schema().inputs}
    values.update(overrides)
    return {name: value if name in ("latents", "positive") else [value] for name, value in values.items()}


@pytest.fixture(scope="module")
def trained(pack, loaded, conds, start_image, tmp_path_factory):
    """Core Train LoRA + Save LoRA on two clips; the conditions each model call received."""
    train = importlib.import_module("comfy_extras.nodes_train")
    clips = [clip_inputs(pack, loaded, conds, clip(image, shift))
             for image, shift in ((start_image, 2), (ImageOps.mirror(start_image), -3))]
    calls = []

    def recorder(apply_model, args):
        calls.append({"input": args["input"].shape, **{k: v.detach().clone() for k, v in args["c"].items()
                                                        if isinstance(v, torch.Tensor)}})
        return apply_model(args["input"], args["timestep"], **args["c"])

    model = loaded[0].clone()
    model.set_model_unet_function_wrapper(recorder)
    inputs = train_inputs(train.TrainLoraNode, model=model, latents=[latent for _, latent in clips],
                          positive=[positive for positive, _ in clips], steps=STEPS, learning_rate=0.01, rank=4,
                          seed=0, training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=True)
    *_, lora, loss_map, steps = train.TrainLoraNode.execute(**inputs).result  # 0.8 also returns the model
    output = tmp_path_factory.mktemp("output")
    folder_paths.set_output_directory(str(output))
    train.SaveLoRA.execute(lora, prefix="loras/droplet_trained", steps=steps)
    (saved,) = (output / "loras").glob("droplet_trained_*.safetensors")
    return clips, calls, loss_map, saved


def test_train_lora_sees_the_fps_and_the_image_condition(pack, loaded, trained):
    clips, calls, loss_map, _ = trained
    assert len(loss_map["loss"]) == STEPS and all(torch.isfinite(torch.tensor(loss_map["loss"])))
    assert len(calls) == STEPS
    base = loaded[0].model
    concats = [base.concat_cond(noise=latent["samples"], **positive[0][1]) for positive, latent in clips]
    for call in calls:
        assert call["input"][1] == latent_channels(clips)
        torch.testing.assert_close(call["fps"], fps_tensor(FPS).to(call["fps"]))
        assert any(torch.equal(call["c_concat"][:1].cpu(), concat.cpu()) for concat in concats)


def latent_channels(clips):
    return clips[0][1]["samples"].shape[1]


def test_saved_lora_has_core_names_and_loads_with_core_and_the_pack(pack, loaded, conds, start_image, trained,
                                                                     models_dir):
    *_, saved = trained
    tensors = load_file(str(saved))
    assert set(tensors) == set(train_lora_layout(loaded[0].model, seed=0))  # the layout the stand-in tests use
    loras = models_dir / "loras"
    loras.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras))
    shutil.copy(saved, loras / saved.name)
    ours = run(pack, "DropletVideoLoraLoader", model=loaded[0], lora_name=saved.name, strength=1.0)[0]
    core = core_nodes_module().LoraLoaderModelOnly().load_lora_model_only(loaded[0], saved.name, 1.0)[0]
    train = importlib.import_module("comfy_extras.nodes_train")
    direct = train.LoraModelLoader.execute(loaded[0], tensors, 1.0).args[0]  # Load LoRA Model: no file
    ours_weights = on_device(pack, ours)
    for other in (core, direct):
        other_weights = on_device(pack, other)
        for k in ours_weights:
            torch.testing.assert_close(other_weights[k], ours_weights[k], atol=1e-6, rtol=0, msg=k)
    cond = "DropletVideoImageEncode", dict(vae=loaded[1], **SMALL, resize_mode="stretch", noise_augmentation=False,
                                           noise_aug_strength=0.0563, noise_aug_seed=42, vae_tiling=False,
                                           start_image=as_image(start_image))
    plain = sample(pack, loaded[0], conds, cond, steps=2)["samples"]
    for model in (ours, core):
        assert (sample(pack, model, conds, cond, steps=2)["samples"] - plain).abs().max() > 1e-3
    on_device(pack, loaded[0])
