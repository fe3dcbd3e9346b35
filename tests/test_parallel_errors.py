"""Errors in runs across processes keep their cause (droplet_core/parallel/run.py, sample_job.py).

A rank's own error (a shape error, CUDA out of memory) reaches the user as itself: exit status 1
with its traceback. Only a failure of the group (a peer that died or ended, a collective that
timed out: torch.distributed's DistError, gloo's transport errors) becomes ParallelRunError,
"another rank failed" (status 3). tests/test_engine_parallel.py kills a rank outright; the
multi-GPU node's counterpart is in tests/test_nodes_multi_gpu.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from droplet_core.parallel import ParallelLayout, ParallelRunError
from droplet_core.parallel.run import ParallelRun
from droplet_core.parallel.sample_job import STOPPED_BY_PEER, cause_order, free_port
from engine_fixtures import tiny_ckpt  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
RANK_PROBE = Path(__file__).parent / "rank_probe"  # its sitecustomize makes a rank fail (its docstring)
DEADLINE_S = 300  # both ranks, start-up included
# What gloo raised in the surviving rank when its peer ended (torch 2.13, CPU).
GLOO_PEER_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                    "peer [127.0.0.1]:18611. This is typically caused by a remote worker crashing.")
GLOO_TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting "
                "5000ms for send operation to complete")


def two_rank_run() -> ParallelRun:
    return ParallelRun(ParallelLayout(cfg=1, sequence=2), rank=0, device=torch.device("cpu"), mesh=None)


@pytest.mark.parametrize("error", [RuntimeError("shape '[2, 16, 32]' is invalid for input of size 100"),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")],
                         ids=["shape", "oom"])
def test_a_ranks_own_error_passes_through_as_itself(error):
    run = two_rank_run()
    with pytest.raises(type(error)) as raised:
        with run.guard():
            raise error
    assert raised.value is error and run.failed  # failed: the group is left to the process exit


@pytest.mark.parametrize("error", [RuntimeError(GLOO_PEER_CLOSED), RuntimeError(GLOO_TIMEOUT),
                                   dist.DistBackendError("NCCL communicator was aborted on rank 1")],
                         ids=["gloo-peer", "gloo-timeout", "nccl"])
def test_a_failure_of_the_group_names_this_rank_and_the_others(error):
    run = two_rank_run()
    with pytest.raises(ParallelRunError, match=r"rank 0 of 2 .*: the run across processes stopped: .*If another rank "
                                               r"failed or was killed, its own output has the cause"):
        with run.guard():
            raise error
    assert run.failed


def test_the_workers_log_shown_is_the_one_with_the_cause():
    """Own error (1) or refusal (2), then a signal (killed), last STOPPED_BY_PEER."""
    assert sorted([STOPPED_BY_PEER, -9, 1], key=cause_order) == [1, -9, STOPPED_BY_PEER]
    assert sorted([STOPPED_BY_PEER, 2], key=cause_order) == [2, STOPPED_BY_PEER]


def launch_cli(ckpt: Path, out: Path, fail_rank: int) -> list:
    """(exit status, stderr) of each of two CLI ranks started as torchrun would (no agent)."""
    port, procs = free_port(), []
    args = ["--ckpt", str(ckpt), "--width", "64", "--height", "64", "--video_length", "5", "--num_inference_steps",
            "2", "--parallel", "sequence", "--device", "cpu", "--dist_timeout", "60", "--out", str(out / "video.npz")]
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(RANK_PROBE)]), "DROPLET_PROBE_DIR": str(out),
               "DROPLET_PROBE_FAIL_RANK": str(fail_rank)}
        procs.append(subprocess.Popen([sys.executable, "-m", "droplet_core", *args], env=env, cwd=out,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            results.append((proc.wait(DEADLINE_S), proc.stderr.read()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def test_a_cli_rank_that_fails_on_its_own_shows_its_error(tiny_ckpt, tmp_path):  # noqa: F811
    (own_code, own_err), (peer_code, peer_err) = reversed(launch_cli(tiny_ckpt, tmp_path, fail_rank=1))
    assert own_code == 1, own_err
    assert "Traceback" in own_err and "RuntimeError: probe: rank 1 fails on its own" in own_err
    assert "ParallelRunError" not in own_err and "another rank" not in own_err
    assert peer_code == 3, peer_err
    assert "error: rank 0 of 2 (sequence (Ulysses) x2): the run across processes stopped" in peer_err
    assert "If another rank failed or was killed, its own output has the cause" in peer_err
    assert not (tmp_path / "video.npz").exists()
