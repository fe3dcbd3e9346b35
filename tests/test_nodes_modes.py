"""The sampler's modes and the helper nodes against the engine: FPS sweep, resolution bucket,
long video (sliding windows), step cache; the native MODEL under ComfyUI's partial loading and
fp8 weight storage; the attention option."""

import importlib
import math
import sys

import comfy.model_management
import pytest
import torch

from droplet_core.shapes import size_for_budget
from droplet_core.tiny import TRANSFORMER
from lora_files import random_factors, write_peft
from node_fixtures import (ATOL, as_image, conditioned, conds, engine, engine_latent, image_cond,  # noqa: F401
                           load_partially, loaded, run, sample, sample_and_decode, start_image)

SMALL = dict(width=64, height=64)


@pytest.fixture(scope="module")
def small_cond(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=5)


# FPS sweep --------------------------------------------------------------------------------------------

def sweep(pack, loaded, conds, cond, fps_values, layout):
    positive, negative, latent = conditioned(pack, conds, cond)
    return run(pack, "DropletVideoFPSSweep", model=loaded[0], vae=loaded[1], positive=positive, negative=negative,
               latent=latent, fps_values=fps_values, steps=2, cfg=6.0, seed=7, scheduler="ddim", layout=layout,
               vae_tiling=False)[0]


def test_fps_sweep_panels_equal_separate_sampler_and_decode_runs(pack, loaded, conds, small_cond):
    side_by_side = sweep(pack, loaded, conds, small_cond, " 4, 32", "side_by_side")
    batch = sweep(pack, loaded, conds, small_cond, "4,32", "batch")
    separate = [sample_and_decode(pack, loaded, conds, small_cond, fps=fps, steps=2, seed=7) for fps in (4, 32)]
    frames = separate[0].shape[0]
    assert side_by_side.shape == (frames, 64, 128, 3) and batch.shape == (2 * frames, 64, 64, 3)
    for i, video in enumerate(separate):
        torch.testing.assert_close(side_by_side[:, :, 64 * i:64 * (i + 1)], video, atol=ATOL, rtol=0)
        torch.testing.assert_close(batch[frames * i:frames * (i + 1)], video, atol=ATOL, rtol=0)
    assert (separate[0] - separate[1]).abs().max() > 1e-3  # the FPS condition changes the video


@pytest.mark.parametrize("fps_values, message", [
    ("4,fast", "'fast' is not a whole number: write FPS values separated by commas, e.g. 4,8,16,32"),
    ("4.5", "'4.5' is not a whole number"),
    (" , ", "fps_values is empty"),
    ("8,0", "0 is outside 1..60"),
    ("8,61", "61 is outside 1..60")])
def test_fps_sweep_refuses_bad_fps_values(pack, loaded, conds, small_cond, fps_values, message):
    with pytest.raises(ValueError, match=message):
        sweep(pack, loaded, conds, small_cond, fps_values, "side_by_side")


# Resolution bucket -------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height, base", [(1920, 1080, 640), (1080, 1920, 512), (500, 500, 896),
                                                 (672, 384, 640), (1024, 300, 768)])
def test_resolution_bucket_keeps_the_aspect_ratio_at_the_budget(pack, width, height, base):
    out_w, out_h = run(pack, "DropletVideoResolutionBucket", image=torch.zeros(2, height, width, 3),
                       base_resolution=base)
    assert (out_w, out_h) == size_for_budget(width, height, base)
    assert out_w % 16 == 0 and out_h % 16 == 0
    assert abs(math.log(out_w / out_h) - math.log(width / height)) < 16 / min(out_w, out_h)  # rounding to 16
    assert abs(out_w * out_h / base ** 2 - 1) < 0.1


# Long video, step cache --------------------------------------------------------------------------------

def test_long_video_twice_the_trained_length_equals_the_engine(pack, loaded, conds, engine, start_image):
    frames = 2 * (TRANSFORMER.max_video_frames - 1) + 1  # 177 frames: 45 latent frames, the model knows 23
    cond = image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=frames)
    with pytest.raises(ValueError, match="exceed the positional table.*the sampler's long_video"):
        sample(pack, loaded[0], conds, cond, steps=2)
    latent = sample(pack, loaded[0], conds, cond, steps=2, long_video=True, window_overlap=0)
    assert latent["samples"].shape == (1, 16, 2 * TRANSFORMER.latent_frames - 1, 8, 8)
    expected = engine_latent(engine, image=start_image, **SMALL, frames=frames, steps=2, long_video=True)
    torch.testing.assert_close(latent["samples"], expected, atol=ATOL, rtol=0)
    cached = sample(pack, loaded[0], conds, cond, steps=6, long_video=True, cache_threshold=0.3)["samples"]
    expected = engine_latent(engine, image=start_image, **SMALL, frames=frames, steps=6, long_video=True,
                             cache_threshold=0.3)
    torch.testing.assert_close(cached, expected, atol=ATOL, rtol=0)


def test_image_encode_with_the_model_refuses_too_many_frames_before_the_vae_encode(pack, loaded, conds,
                                                                                     start_image, monkeypatch):
    vae = loaded[1].patcher.model.module
    monkeypatch.setattr(vae.encoder, "forward", lambda *args, **kwargs: pytest.fail("the VAE encode ran"))
    too_long = image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=TRANSFORMER.max_video_frames + 4)
    too_long[1]["model"] = loaded[0]
    with pytest.raises(ValueError, match=f"{TRANSFORMER.max_video_frames + 4} frames = {TRANSFORMER.latent_frames + 1} "
                                         "latent frames exceed the positional table.*disconnect this node.s `model` input"):
        conditioned(pack, conds, too_long)


def test_vae_decode_refuses_nan_latents_instead_of_a_black_video(pack, loaded):
    """Core KSampler does not check each step as the DropletVideo Sampler does (a NaN LoRA through
    core Load LoRA ended as an all-black "success" in a real ComfyUI)."""
    samples = torch.zeros(1, 16, 2, 8, 8)
    samples[0, 3, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf values, which would decode to a black video"):
        run(pack, "DropletVideoVAEDecode", vae=loaded[1], latent={"samples": samples}, tiling=False,
            trim_to_frames=False)


def test_long_video_settings_that_cannot_work_are_refused(pack, loaded, conds, small_cond):
    window = TRANSFORMER.latent_frames
    with pytest.raises(ValueError, match=f"window_overlap {window} must be below the model's window of {window} "
                                         f"latent frames"):
        sample(pack, loaded[0], conds, small_cond, long_video=True, window_overlap=window)


def record_instances(monkeypatch, module, name: str) -> list:
    """Every instance of `module.name` (a class) made while the test runs."""
    made, cls = [], getattr(module, name)

    class Recorded(cls):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(module, name, Recorded)
    return made


def test_step_cache_equals_the_engine_and_skips_steps(pack, loaded, conds, engine, small_cond, start_image,
                                                      monkeypatch):
    caches = record_instances(monkeypatch, importlib.import_module(f"{pack.__name__}.droplet_core.sample_plan"), "StepCache")
    latent = sample(pack, loaded[0], conds, small_cond, steps=8, seed=2, cache_threshold=0.3)
    expected = engine_latent(engine, image=start_image, **SMALL, frames=5, steps=8, seed=2, cache_threshold=0.3)
    torch.testing.assert_close(latent["samples"], expected, atol=ATOL, rtol=0)
    assert len(caches) == 1 and caches[0].skipped_steps > 0
    sample(pack, loaded[0], conds, small_cond, steps=8, seed=2)
    assert len(caches) == 1  # cache_threshold 0: no cache


# The native MODEL: partial loading, fp8 storage, attention kernel -----------------------------------------

def test_partial_load_below_the_model_size_gives_the_full_load_latents(pack, loaded, conds, small_cond, monkeypatch):
    """ComfyUI's lowvram path: layers past the budget keep their weights on the offload device and
    are cast per call by ComfyUI's operations; the latents must not change."""
    full = sample(pack, loaded[0], conds, small_cond, steps=2)["samples"]
    model = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")[0]
    load_partially(monkeypatch, model)
    partial = sample(pack, model, conds, small_cond, steps=2)["samples"]
    assert model.model.model_lowvram and 0 < model.loaded_size() < model.model_size()
    cast_per_call = [m for m in model.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
    assert cast_per_call, "the budget left no layer to cast on the fly"
    torch.testing.assert_close(partial, full, atol=1e-6, rtol=0)
    model.unpatch_model(model.offload_device)


def test_vae_and_text_encoder_use_comfyuis_devices_for_their_kind(pack, models_dir, monkeypatch):
    """--cpu-vae, --highvram and --lowvram act through these device functions: the VAE and T5
    load where ComfyUI puts a VAE / text encoder, not on the diffusion model's device."""
    mm = comfy.model_management
    devices = {name: torch.device("cpu", index) for index, name in enumerate(
        ("vae_device", "vae_offload_device", "text_encoder_device", "text_encoder_offload_device"), start=1)}
    for name, device in devices.items():
        monkeypatch.setattr(mm, name, lambda device=device: device)
    _, vae, text_encoder = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")
    assert (vae.patcher.load_device, vae.patcher.offload_device) == (devices["vae_device"],
                                                                     devices["vae_offload_device"])
    assert (text_encoder.patcher.load_device, text_encoder.patcher.offload_device) == (
        devices["text_encoder_device"], devices["text_encoder_offload_device"])


def test_the_model_tells_multigpu_cfg_split_how_to_rebuild_it(pack, loaded):
    """ComfyUI 0.33's MultiGPU CFG Split deep-clones a MODEL per GPU through cached_patcher_init."""
    model = loaded[0]
    if not hasattr(model, "cached_patcher_init"):
        pytest.skip("this ComfyUI has no MultiGPU CFG Split (no cached_patcher_init)")
    factory, args = model.cached_patcher_init[:2]
    rebuilt = factory(*args)
    assert rebuilt.model is not model.model and type(rebuilt.model) is type(model.model)
    ours, theirs = model.model.diffusion_model.state_dict(), rebuilt.model.diffusion_model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert rebuilt.model.scheduler_config == model.model.scheduler_config


def test_every_weight_of_the_native_model_sits_in_a_comfyui_operation(pack, loaded):
    ops = importlib.import_module("comfy.ops")
    operations = (ops.disable_weight_init.Linear, ops.disable_weight_init.LayerNorm, ops.disable_weight_init.Conv2d)
    diffusion_model = loaded[0].model.diffusion_model
    holders = {name.rsplit(".", 1)[0] for name, _ in diffusion_model.named_parameters()}
    assert holders and all(isinstance(diffusion_model.get_submodule(name), operations) for name in holders)


def test_fp8_weight_format_stores_fp8_computes_close_and_takes_loras(pack, loaded, conds, small_cond, models_dir):
    fp8 = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32", weight_format="fp8_e4m3fn",
              attention="sdpa")[0]
    assert {p.dtype for p in fp8.model.diffusion_model.parameters()} == {torch.float8_e4m3fn}
    assert fp8.model.manual_cast_dtype == torch.float32
    latent = sample(pack, fp8, conds, small_cond, steps=2)["samples"]
    plain = sample(pack, loaded[0], conds, small_cond, steps=2)["samples"]
    assert 0 < (latent - plain).abs().max() < 0.2 * plain.abs().max()  # fp8 rounding, not another model
    write_peft(models_dir / "loras" / "droplet_test_fp8.safetensors",
               random_factors(loaded[0].model.diffusion_model, 4))
    patched = run(pack, "DropletVideoLoraLoader", model=fp8, lora_name="droplet_test_fp8.safetensors",
                  strength=1.0)[0]
    with_lora = sample(pack, patched, conds, small_cond, steps=2)["samples"]
    assert (with_lora - latent).abs().max() > 1e-3  # ComfyUI patches fp8 weights as it does its own models


def test_sage_attention_without_the_package_says_how_to_install_it(pack, monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", None)  # import fails as when it is not installed
    with pytest.raises(ValueError, match="pip install sageattention"):
        run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
            weight_format="default", attention="sage")
