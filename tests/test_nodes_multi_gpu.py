"""DropletVideo Sampler (multi-GPU) on CPU worker processes (gloo): the DropletVideo Sampler's
latents with the work really split, progress, refusals, Cancel, a worker's failure.

Each run starts 2 workers (python -m droplet_core.parallel.sample_worker) that load the tiny
checkpoint's transformer in fp32; 64x64, 5 frames, 2 steps, image-to-video, CFG 6. Tolerance as in
tests/test_engine_parallel.py: the split runs do the same arithmetic in another order, compared
at 1e-5 of the latents' scale. Every run is bounded (a Cancel after RUN_BOUND_S, a short collective
timeout): a hung worker fails the test instead of hanging it.
"""

import importlib
import json
import os
import threading
from pathlib import Path

import comfy.model_management
import comfy.utils
import pytest
import torch

from lora_files import random_factors, write_peft
from node_fixtures import as_image, conditioned, conds, image_cond, loaded, run, start_image  # noqa: F401

SMALL = dict(width=64, height=64, frames=5)
SETTINGS = dict(steps=2, cfg=6.0, seed=42, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)
RANK_PROBE = Path(__file__).parent / "rank_probe"  # its sitecustomize probes the workers (its docstring)


@pytest.fixture(scope="module")
def node_module(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.multi_gpu_sampler")


RUN_BOUND_S = 300  # start-up included, far above an idle 2-core machine's


@pytest.fixture(autouse=True)
def bounded(node_module, monkeypatch):
    """The user's Cancel, pressed after RUN_BOUND_S: a test that hangs ends with InterruptProcessingException."""
    monkeypatch.setattr(node_module, "COLLECTIVE_TIMEOUT_S", 60)
    cancel = threading.Timer(RUN_BOUND_S, comfy.model_management.interrupt_current_processing, (True,))
    cancel.start()
    yield
    cancel.cancel()
    comfy.model_management.interrupt_current_processing(False)


@pytest.fixture(scope="module")
def inputs(pack, loaded, conds, start_image):  # noqa: F811
    """(positive, negative, latent) of DropletVideo Image Encode at 64x64, 5 frames, fps 8."""
    return conditioned(pack, conds, image_cond(pack, loaded[1], start=as_image(start_image), **SMALL))


@pytest.fixture(scope="module")
def single(pack, loaded, inputs):  # noqa: F811
    positive, negative, latent = inputs
    return run(pack, "DropletVideoSampler", model=loaded[0], positive=positive, negative=negative, latent=latent,
               **SETTINGS)[0]


def multi_gpu(pack, model, inputs, **settings):
    positive, negative, latent = inputs
    return run(pack, "DropletVideoMultiGPUSampler", model=model, positive=positive, negative=negative,
               latent=settings.pop("latent", latent), **{**SETTINGS, "gpus": 2, "parallel": "auto", **settings})[0]


def close_to(parallel: torch.Tensor, single: torch.Tensor) -> None:
    error = (parallel - single).abs().max().item()
    assert error <= 1e-5 * max(1.0, single.abs().max().item()), f"max |multi-GPU - single| = {error:.3g}"


def probe_workers(monkeypatch, folder: Path, fail_rank=None) -> Path:
    """Starts the workers with tests/rank_probe on their PYTHONPATH: each writes folder/probe<N>.json
    (the shape of its first block input); `fail_rank` raises its own RuntimeError there."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(RANK_PROBE), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("DROPLET_PROBE_DIR", str(folder))
    if fail_rank is not None:
        monkeypatch.setenv("DROPLET_PROBE_FAIL_RANK", str(fail_rank))
    return folder


def probe_reports(folder: Path) -> list:
    return [json.loads((folder / f"probe{rank}.json").read_text()) for rank in range(2)]


# (parallel, denoise, the CFG batch on each rank (of 2), the number of ranks the video tokens are split over)
SPLITS = [("sequence", 1.0, 2, 2), ("cfg", 1.0, 1, 1), ("auto", 0.5, 1, 1)]


@pytest.mark.parametrize("parallel, denoise, batch, token_ranks", SPLITS, ids=["sequence", "cfg", "auto-v2v"])
def test_two_workers_give_the_samplers_latents_with_the_work_split(pack, loaded, inputs, single,  # noqa: F811
                                                                   monkeypatch, tmp_path, parallel, denoise,
                                                                   batch, token_ranks):
    probes, updates = probe_workers(monkeypatch, tmp_path), []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total)))
    latent = single if denoise < 1 else inputs[2]  # video-to-video: re-generate the sampler's own latent
    expected = single if denoise == 1 else run(pack, "DropletVideoSampler", model=loaded[0], positive=inputs[0],
                                              negative=inputs[1], latent=latent, **{**SETTINGS, "denoise": denoise})[0]
    updates.clear()
    out = multi_gpu(pack, loaded[0], inputs, latent=latent, parallel=parallel, denoise=denoise)
    assert out["samples"].shape == expected["samples"].shape
    close_to(out["samples"], expected["samples"])
    steps = int(SETTINGS["steps"] * denoise)
    assert updates == [(step, steps) for step in range(1, steps + 1)]
    frames, height, width = latent["samples"].shape[2:]
    patch = loaded[0].model.droplet_config.patch_size
    tokens = frames * (height // patch) * (width // patch)
    reports = probe_reports(probes)
    assert [r["block_input"][:2] for r in reports] == [[batch, tokens // token_ranks]] * 2, reports


def test_a_model_with_a_lora_or_a_model_patch_is_refused(pack, loaded, inputs, models_dir):  # noqa: F811
    write_peft(models_dir / "loras" / "droplet_test_multi_gpu.safetensors",
               random_factors(loaded[0].model.diffusion_model, seed=5))
    with_lora = run(pack, "DropletVideoLoraLoader", model=loaded[0], lora_name="droplet_test_multi_gpu.safetensors",
                    strength=1.0)[0]
    refused = "loads the transformer file in each worker; LoRAs and model patches are not carried over"
    with pytest.raises(ValueError, match=refused + r" \(this MODEL has \d+ weight patches \(LoRA\)\)"):
        multi_gpu(pack, with_lora, inputs)
    wrapped = loaded[0].clone()
    wrapped.model_options["transformer_options"]["wrappers"] = {
        "diffusion_model": {None: [lambda executor, *args, **kwargs: executor(*args, **kwargs)]}}
    with pytest.raises(ValueError, match=refused + r" \(this MODEL has wrappers diffusion_model\)"):
        multi_gpu(pack, wrapped, inputs)


def test_more_gpus_than_comfyui_sees_is_refused(pack, loaded, inputs, monkeypatch):  # noqa: F811
    on_cuda = loaded[0].clone()
    on_cuda.load_device = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"gpus 2 is more than the 1 CUDA device\(s\) ComfyUI sees .*: use the "
                                         r"DropletVideo Sampler"):
        multi_gpu(pack, on_cuda, inputs)


def test_a_split_that_cannot_work_is_refused_before_any_worker_starts(pack, loaded, inputs, node_module,  # noqa: F811
                                                                       monkeypatch):
    monkeypatch.setattr(node_module, "WorkerGroup", None)  # starting one would fail with a TypeError
    with pytest.raises(ValueError, match="cfg needs guidance_scale > 1"):
        multi_gpu(pack, loaded[0], inputs, parallel="cfg", cfg=1.0)
    heads = loaded[0].model.droplet_config.num_attention_heads
    with pytest.raises(ValueError, match=f"does not divide the model's {heads} attention heads"):
        multi_gpu(pack, loaded[0], inputs, parallel="sequence", gpus=heads + 1)


@pytest.fixture
def started_groups(node_module, monkeypatch) -> list:
    groups = []

    class Recorded(node_module.WorkerGroup):
        def __init__(self, *args):
            super().__init__(*args)
            groups.append(self)

    monkeypatch.setattr(node_module, "WorkerGroup", Recorded)
    return groups


def test_cancel_stops_every_worker(pack, loaded, inputs, started_groups):  # noqa: F811
    comfy.model_management.interrupt_current_processing(True)  # Cancel pressed: seen at the first poll
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            multi_gpu(pack, loaded[0], inputs)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(started_groups) == 1 and all(proc.poll() is not None for proc in started_groups[0].procs)


def test_a_failing_worker_ends_the_run_with_its_error(pack, loaded, inputs, monkeypatch, tmp_path):  # noqa: F811
    source = loaded[0].model.droplet_source
    monkeypatch.setattr(loaded[0].model, "droplet_source", source._replace(path=str(tmp_path / "moved")))
    failed = r"(?s)worker rank [01] of 2 exited with status 2; the other workers were stopped.*error: .*moved does not"
    with pytest.raises(RuntimeError, match=failed):  # the rank that fails first (here both fail alike)
        multi_gpu(pack, loaded[0], inputs)


def test_a_workers_own_error_reaches_the_user_as_itself(pack, loaded, inputs, monkeypatch, tmp_path):  # noqa: F811
    """Rank 1 raises a RuntimeError of its own in its first block (as a shape error or CUDA OOM would);
    rank 0 then stops at its next collective (STOPPED_BY_PEER). The error shows rank 1's traceback."""
    probe_workers(monkeypatch, tmp_path, fail_rank=1)
    own = r"(?s)worker rank 1 of 2 exited with status 1; .*RuntimeError: probe: rank 1 fails on its own"
    with pytest.raises(RuntimeError, match=own):
        multi_gpu(pack, loaded[0], inputs, parallel="sequence")
