"""Several processes on one video (droplet_core/parallel/): the same latents as one process.

CPU ranks on gloo, started by parallel_workers.run_ranks, fp32, the tiny checkpoint at 64x64,
5 frames, 2 steps, image-to-video with CFG 6. gloo has all_to_all_single on CPU (torch 2.13), so
diffusers' Ulysses all-to-all runs as it would on NCCL: nothing is emulated. Two-rank jobs share
one start (sequence, CFG, a rotary forward, then the fault job that kills rank 1), the four-rank
CFG x sequence job another; each start has a hard deadline, so no test can hang.

Tolerance: the parallel runs do the same arithmetic in another order (GEMMs over half the rows
or half the batch, keys in rank-major order), a few fp32 ulps per forward that CFG 6 multiplies
by ~11; the latents are ~9 in magnitude, so they are compared at 1e-5 of their scale.
"""

import signal

import pytest
import torch

from droplet_core.cli import main
from droplet_core.loading import load_transformer
from droplet_core.parallel import ParallelLayout, plan_layout
from droplet_core.pipeline import Request, load_pipeline
from engine_fixtures import GOLDENS, tiny_ckpt  # noqa: F401
from droplet_core.video_io import load_image
from parallel_workers import TIMEOUT_S, run_ranks, transformer_inputs

pytestmark = pytest.mark.heavy

ROTARY = {"use_rotary_positional_embeddings": True, "sample_width": 8, "sample_height": 8, "sample_frames": 5}
DEADLINE_S = 300  # all ranks, start-up included: far above their time on an idle 2-core machine
REQUEST = {"prompt": "a panda plays a guitar", "image": str(GOLDENS / "start.png"), "width": 64, "height": 64,
           "frames": 5, "steps": 2, "guidance_scale": 6.0, "max_sequence_length": 226}


def close_to(parallel: torch.Tensor, single: torch.Tensor) -> None:
    error = (parallel - single).abs().max().item()
    assert error <= 1e-5 * max(1.0, single.abs().max().item()), f"max |parallel - single| = {error:.3g}"


@pytest.fixture(scope="module")
def single(tiny_ckpt):  # noqa: F811
    request = Request(**{**REQUEST, "image": load_image(REQUEST["image"])})
    return load_pipeline(tiny_ckpt).generate(request).latents


@pytest.fixture(scope="module")
def two_ranks(tiny_ckpt, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("two_ranks")
    jobs = [{"name": "sequence", "mode": "sequence"}, {"name": "cfg", "mode": "cfg"},
            {"name": "rotary", "transformer_only": True, "overrides": ROTARY},
            {"name": "fault", "mode": "sequence", "kill_rank": 1, "kill_step": 0}]
    codes = run_ranks(2, tiny_ckpt, REQUEST, jobs, out, DEADLINE_S)
    return codes, [torch.load(out / f"rank{r}.pt") for r in range(2)], out


def test_sequence_parallel_on_two_processes_equals_one_process(two_ranks, single):
    _, results, _ = two_ranks
    for rank in (0, 1):
        close_to(results[rank]["sequence"], single)


def test_cfg_parallel_on_two_processes_equals_one_process(two_ranks, single):
    _, results, _ = two_ranks
    for rank in (0, 1):
        close_to(results[rank]["cfg"], single)


def test_sequence_parallel_rotary_forward_equals_one_process(two_ranks, tiny_ckpt):  # noqa: F811
    """The release uses sin-cos positions; the RoPE rows must be split like the tokens (227 text tokens: uneven)."""
    model = load_transformer(tiny_ckpt / "transformer", config_overrides=ROTARY)
    inputs = transformer_inputs(model)
    with torch.no_grad():
        expected = model(*inputs[:5], image_rotary_emb=inputs[5])
    _, results, _ = two_ranks
    close_to(results[0]["rotary"], expected)


def test_a_killed_rank_ends_the_other_with_a_clear_error(two_ranks):
    codes, results, out = two_ranks
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 0, "rank 0 must end by itself, with the error handled"
    fault = results[0]["fault"]
    assert "rank 0 of 2" in fault["error"] and "was killed" in fault["error"]
    assert fault["at"] - float((out / "killed_at").read_text()) < TIMEOUT_S + 10


def test_cfg_and_sequence_parallel_on_four_processes_equals_one_process(tiny_ckpt, single, tmp_path):  # noqa: F811
    codes = run_ranks(4, tiny_ckpt, REQUEST, [{"name": "auto", "mode": "auto"}], tmp_path, DEADLINE_S)
    assert codes == [0, 0, 0, 0]
    for rank in range(4):
        close_to(torch.load(tmp_path / f"rank{rank}.pt")["auto"], single)


def test_layouts():
    assert plan_layout("auto", 4, 48, 6.0) == ParallelLayout(cfg=2, sequence=2)
    assert plan_layout("auto", 2, 48, 6.0) == ParallelLayout(cfg=2, sequence=1)
    assert plan_layout("auto", 4, 48, 1.0) == ParallelLayout(cfg=1, sequence=4)
    assert plan_layout("auto", 3, 48, 6.0) == ParallelLayout(cfg=1, sequence=3)
    assert plan_layout("sequence", 8, 48, 6.0) == ParallelLayout(cfg=1, sequence=8)
    assert plan_layout("none", 8, 48, 6.0) == ParallelLayout()
    with pytest.raises(ValueError, match="needs guidance_scale > 1"):
        plan_layout("cfg", 2, 48, 1.0)


def test_a_degree_that_does_not_divide_the_heads_is_refused():
    with pytest.raises(ValueError, match="degree 5 does not divide the model's 48 attention heads .* valid degrees "
                                         "are 1, 2, 3, 4, 6, 8, 12, 16, 24, 48;"):
        plan_layout("sequence", 5, 48, 6.0)
    with pytest.raises(ValueError, match="degree 5 does not divide"):
        plan_layout("auto", 10, 48, 6.0)  # CFG x2, sequence x5


def test_cli_refuses_the_degree_before_loading(tiny_ckpt, monkeypatch, capsys):  # noqa: F811
    """torchrun --nproc_per_node 3 on the tiny model (2 heads): refused with the valid degrees, no group joined."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main(["--ckpt", str(tiny_ckpt), "--parallel", "sequence", "--out", "unused.mp4"]) == 2
    assert "valid degrees are 1, 2;" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
