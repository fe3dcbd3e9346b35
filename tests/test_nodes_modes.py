"""The sampler's modes and the helper nodes against the engine: FPS sweep, resolution bucket,
long video (sliding windows), step cache; the loaders' fp8 and attention options."""

import importlib
import math
import sys

import comfy.model_management
import pytest
import torch

from droplet_core.configs import RELEASE_TRANSFORMER
from droplet_core.engine_options import EngineOptions
from droplet_core.pipeline import load_pipeline
from droplet_core.shapes import size_for_budget
from droplet_core.tiny import TRANSFORMER
from droplet_core.transformer import DropletVideoTransformer3DModel
from lora_files import random_factors, write_peft
from node_fixtures import (ATOL, as_image, conds, engine, engine_latent, image_cond, loaded, run, sample,  # noqa: F401
                           sample_and_decode, start_image)

SMALL = dict(width=64, height=64)


@pytest.fixture(scope="module")
def small_cond(pack, loaded, start_image):
    return image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=5)


# FPS sweep --------------------------------------------------------------------------------------------

def sweep(pack, loaded, conds, cond, fps_values, layout):
    return run(pack, "DropletVideoFPSSweep", model=loaded[0], vae=loaded[1], positive=conds[0], negative=conds[1],
               image_cond=cond, fps_values=fps_values, steps=2, cfg=6.0, seed=7, scheduler="ddim", layout=layout,
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
    frames = 2 * (TRANSFORMER.max_video_frames - 1) + 1  # 169 frames: 43 latent frames, the model knows 22
    cond = image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=frames)
    with pytest.raises(ValueError, match="long-video mode"):
        sample(pack, loaded[0], conds, cond, steps=2)
    latent = sample(pack, loaded[0], conds, cond, steps=2, long_video=True, window_overlap=0)
    assert latent["samples"].shape == (1, 16, 43, 8, 8)
    expected = engine_latent(engine, image=start_image, **SMALL, frames=frames, steps=2, long_video=True)
    torch.testing.assert_close(latent["samples"], expected, atol=ATOL, rtol=0)
    cached = sample(pack, loaded[0], conds, cond, steps=6, long_video=True, cache_threshold=0.3)["samples"]
    expected = engine_latent(engine, image=start_image, **SMALL, frames=frames, steps=6, long_video=True,
                             cache_threshold=0.3)
    torch.testing.assert_close(cached, expected, atol=ATOL, rtol=0)


def test_long_video_settings_that_cannot_work_are_refused(pack, loaded, conds, small_cond):
    with pytest.raises(ValueError, match="window_overlap 22 must be below the model's window of 22 latent frames"):
        sample(pack, loaded[0], conds, small_cond, long_video=True, window_overlap=22)


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
    caches = record_instances(monkeypatch, importlib.import_module(f"{pack.__name__}.nodes.sampler"), "StepCache")
    latent = sample(pack, loaded[0], conds, small_cond, steps=8, seed=2, cache_threshold=0.3)
    expected = engine_latent(engine, image=start_image, **SMALL, frames=5, steps=8, seed=2, cache_threshold=0.3)
    torch.testing.assert_close(latent["samples"], expected, atol=ATOL, rtol=0)
    assert len(caches) == 1 and caches[0].skipped_steps > 0
    sample(pack, loaded[0], conds, small_cond, steps=8, seed=2)
    assert len(caches) == 1  # cache_threshold 0: no cache


# Loader options: fp8 weights, attention kernel ------------------------------------------------------------

def test_fp8_weight_format_equals_the_engine_and_refuses_lora_patches(pack, loaded, conds, small_cond, start_image,
                                                                      models_dir):
    fp8 = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32",
              offload="comfy_model_management", weight_format="fp8_e4m3fn", attention="sdpa")
    assert fp8[0] is not loaded[0]  # another cache key: loaded anew
    blocks = fp8[0].patcher.model.module.transformer_blocks
    assert blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    latent = sample(pack, fp8[0], conds, small_cond, steps=2)["samples"]
    engine = load_pipeline(models_dir / "DropletVideo" / "tiny", device=comfy.model_management.get_torch_device(),
                           options=EngineOptions(weights="fp8_e4m3fn"))
    expected = engine_latent(engine, image=start_image, **SMALL, frames=5, steps=2)
    torch.testing.assert_close(latent, expected, atol=ATOL, rtol=0)
    plain = sample(pack, loaded[0], conds, small_cond, steps=2)["samples"]
    assert 0 < (latent - plain).abs().max() < 0.1 * plain.abs().max()  # fp8 rounding, not another model
    write_peft(models_dir / "loras" / "droplet_test_fp8.safetensors", random_factors(loaded[0].patcher.model.module, 4))
    with pytest.raises(ValueError, match="keeps its weights in fp8.*set weight_format to default"):
        run(pack, "DropletVideoLoraLoader", model=fp8[0], lora_name="droplet_test_fp8.safetensors", strength=1.0)


def test_sage_attention_without_the_package_says_how_to_install_it(pack, monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", None)  # import fails as when it is not installed
    with pytest.raises(ValueError, match="pip install sageattention"):
        run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
            weight_format="default", attention="sage")


def test_block_swap_equals_the_whole_model_on_the_device_with_and_without_a_lora(pack, loaded, conds, small_cond,
                                                                                 models_dir, monkeypatch):
    swaps = record_instances(monkeypatch, importlib.import_module(f"{pack.__name__}.nodes.offload"), "BlockSwap")
    swapped = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32",
                  offload="block_swap", swap_blocks=1)[0]
    assert swapped.patcher.load_device == comfy.model_management.unet_offload_device()
    plain = sample(pack, loaded[0], conds, small_cond, steps=2)["samples"]
    torch.testing.assert_close(sample(pack, swapped, conds, small_cond, steps=2)["samples"], plain, atol=ATOL, rtol=0)
    assert len(swaps) == 1 and swaps[0].blocks_on_device == 1 and swaps[0].fetches == 2  # 1 swapped block x 2 steps
    transformer = loaded[0].patcher.model.module
    write_peft(models_dir / "loras" / "droplet_test_swap.safetensors", random_factors(transformer, 5))
    lora = dict(lora_name="droplet_test_swap.safetensors", strength=0.7)
    expected = sample(pack, run(pack, "DropletVideoLoraLoader", model=loaded[0], **lora)[0], conds, small_cond,
                      steps=2)["samples"]
    with_lora = run(pack, "DropletVideoLoraLoader", model=swapped, **lora)[0]
    torch.testing.assert_close(sample(pack, with_lora, conds, small_cond, steps=2)["samples"], expected, atol=ATOL,
                               rtol=0)
    assert (expected - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="swap_blocks 3 is more than this transformer's 2 blocks"):
        run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
            offload="block_swap", swap_blocks=3)


def test_sequential_offload_equals_the_whole_model_and_detaches_after_sampling(pack, loaded, conds, small_cond):
    sequential = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
                     offload="sequential")[0]
    assert sequential.patcher.load_device == comfy.model_management.unet_offload_device()
    whole = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32")[0]
    transformer = sequential.patcher.model.module
    calls = []
    handle = transformer.transformer_blocks[1].attn1.to_q.register_forward_pre_hook(
        lambda module, args: calls.append(module._forward_pre_hooks.copy()))
    latent = sample(pack, sequential, conds, small_cond, steps=2)["samples"]
    handle.remove()
    torch.testing.assert_close(latent, sample(pack, whole, conds, small_cond, steps=2)["samples"], atol=ATOL, rtol=0)
    assert len(calls) == 2 and all(len(hooks) == 2 for hooks in calls)  # 2 steps; this hook and the offload's
    leftover = [name for name, module in transformer.named_modules() if module._forward_pre_hooks or
                module._forward_hooks]
    assert leftover == []  # the hooks go with the sampling run


def test_sequential_offload_interrupted_midway_leaves_every_weight_parked(pack, conds, small_cond):
    sequential = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
                     offload="sequential")[0]
    transformer = sequential.patcher.model.module
    before = {name: p.data_ptr() for name, p in transformer.named_parameters()}

    def cancel(module, args, output):  # runs before the offload's own post-hook, which then never runs
        raise comfy.model_management.InterruptProcessingException()

    handle = transformer.transformer_blocks[1].attn1.to_q.register_forward_hook(cancel)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(pack, sequential, conds, small_cond, steps=2)
    handle.remove()
    after = {name: p.data_ptr() for name, p in transformer.named_parameters()}
    assert after == before  # the interrupted layer's device copy is gone too
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in transformer.modules())


def test_offload_none_keeps_the_transformer_on_the_device_and_auto_off_cuda_is_comfys(pack):
    load = dict(transformer_name="tiny-transformer", precision="fp32")
    resident = run(pack, "DropletVideoTransformerLoader", **load, offload="none")[0]
    assert resident.patcher.offload_device == comfy.model_management.get_torch_device()
    auto = run(pack, "DropletVideoTransformerLoader", **load, offload="auto")[0]
    assert (auto.offload, auto.swap_blocks) == ("comfy_model_management", 0)  # no VRAM to plan for on the CPU
    with pytest.raises(ValueError, match="swap_blocks 1 is for offload block_swap .*set offload to block_swap"):
        run(pack, "DropletVideoTransformerLoader", **load, offload="sequential", swap_blocks=1)
    with pytest.raises(ValueError, match="unknown offload mode 'fast': use one of comfy_model_management, none"):
        run(pack, "DropletVideoTransformerLoader", **load, offload="fast")


def test_auto_offload_plans_the_release_transformer_from_the_gpus_memory(pack, monkeypatch):
    offload = importlib.import_module(f"{pack.__name__}.nodes.offload")
    mm = comfy.model_management
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(mm, "extra_reserved_memory", lambda: 400 * 2**20)
    with torch.device("meta"):
        transformer = DropletVideoTransformer3DModel(RELEASE_TRANSFORMER).to(torch.bfloat16)

    def plan(total_gib, mode="auto"):
        monkeypatch.setattr(mm, "get_total_memory", lambda dev=None: total_gib * 2**30)
        return offload.resolve_node_offload(mode, 0, transformer, torch.bfloat16)

    assert plan(80) == plan(24) == ("comfy_model_management", 0)
    (mode16, swapped16), (mode12, swapped12) = plan(16), plan(12)
    assert mode16 == mode12 == "block_swap" and 0 < swapped16 < swapped12 < 42
    assert plan(12, "block_swap") == plan(12)  # block_swap with swap_blocks 0: the planned count
    assert plan(6) == ("sequential", 0)


def test_compile_compiles_each_block_and_keeps_the_output(pack, conds, small_cond, monkeypatch):
    engine_options = importlib.import_module(f"{pack.__name__}.droplet_core.engine_options")
    graphs = []

    def counting_backend(graph, example_inputs):  # what inductor would receive, run as is
        graphs.append(graph)
        return graph.forward

    compile_blocks = engine_options.compile_blocks
    monkeypatch.setattr(engine_options, "compile_blocks", lambda model, backend: compile_blocks(model, counting_backend))
    load = dict(transformer_name="tiny-transformer", precision="fp32")
    plain = sample(pack, run(pack, "DropletVideoTransformerLoader", **load)[0], conds, small_cond, steps=2)["samples"]
    torch._dynamo.reset()
    compiled = run(pack, "DropletVideoTransformerLoader", **load, compile=True)[0]
    torch.testing.assert_close(sample(pack, compiled, conds, small_cond, steps=2)["samples"], plain, atol=ATOL, rtol=0)
    assert len(graphs) >= len(compiled.patcher.model.module.transformer_blocks)
    with pytest.raises(ValueError, match="compile and offload sequential cannot be combined"):
        run(pack, "DropletVideoTransformerLoader", **load, compile=True, offload="sequential")
