"""Errors in runs across processes keep their cause (droplet_core/parallel/run.py, sample_job.py).

A rank's own error (a shape error, CUDA out of memory) reaches the user as itself: exit status 1
with its traceback. Only a failure of the group (a peer that died or ended, a collective that
timed out: torch.distributed's DistError, gloo's transport errors) becomes ParallelRunError,
"another rank failed" (status 3). Each rank's status is its own whichever rank ends first: a
failed rank ends without the interpreter's teardown (end_process), and the multi-GPU node's
WorkerGroup waits for the failing worker before it shows a log. tests/test_engine_parallel.py kills
a rank outright; the multi-GPU node's counterpart is in tests/test_nodes_multi_gpu.py.
"""

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from droplet_core.parallel import ParallelLayout, ParallelRunError
from droplet_core.parallel.run import ParallelRun
from droplet_core.parallel.sample_job import STOPPED_BY_PEER, WorkerGroup, WorkerGroupError, cause_order, free_port
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


class EndingWorker:
    """A worker process as WorkerGroup polls it: running for `polls` polls, then exited with `code`."""

    def __init__(self, code: int, polls: int):
        self.code, self.polls = code, polls

    def poll(self):
        self.polls -= 1
        return self.code if self.polls < 0 else None

    def kill(self):
        self.code, self.polls = -9, -1

    def wait(self):
        return self.poll()


def worker_group(folder: Path, workers: list) -> WorkerGroup:
    """A WorkerGroup over `workers` (EndingWorker), each with its log in folder/rank<N>.log."""
    group = WorkerGroup.__new__(WorkerGroup)
    group.folder, group.world_size, group.procs, group.steps = folder, len(workers), workers, queue.SimpleQueue()
    group.reader = threading.Thread(target=lambda: None)
    group.reader.start()
    for rank, worker in enumerate(workers):
        (folder / f"rank{rank}.log").write_text(f"log of rank {rank}, status {worker.code}")
    return group


@pytest.mark.parametrize("peer_rank", [0, 1])
def test_the_node_shows_the_failing_worker_even_when_its_peer_ends_first(tmp_path, peer_rank):
    """The peer exits STOPPED_BY_PEER at the first poll, the failing worker (status 1) five polls later
    (its connections closed before its process was gone, as with a slow CUDA teardown)."""
    workers = [EndingWorker(STOPPED_BY_PEER, 0), EndingWorker(1, 5)]
    workers = workers if peer_rank == 0 else workers[::-1]
    own_rank = 1 - peer_rank
    with pytest.raises(WorkerGroupError, match=rf"worker rank {own_rank} of 2 exited with status 1; .*\n"
                                               rf"log of rank {own_rank}, status 1$"):
        worker_group(tmp_path, workers).wait(lambda index, total: None, lambda: None)


def test_the_node_shows_a_stopped_worker_when_no_other_cause_comes(tmp_path):
    with pytest.raises(WorkerGroupError, match="worker rank 0 of 2 exited with status 3"):
        worker_group(tmp_path, [EndingWorker(STOPPED_BY_PEER, 0), EndingWorker(STOPPED_BY_PEER, 3)]).wait(
            lambda index, total: None, lambda: None)


ENDING_RANK = """
import atexit, sys
import torch.distributed as dist
from droplet_core.parallel import end_process
if sys.argv[1] == "group":  # a process group of one, left open as a failed run leaves it
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
atexit.register(lambda: print("teardown"))
def main():
    print("buffered output", end="")
    if sys.argv[3] == "raise":
        raise RuntimeError("own error")
    return 3
end_process(main)
"""


@pytest.mark.parametrize("group, ending", [("group", "return"), ("group", "raise"), ("none", "return")])
def test_a_rank_ends_with_its_own_status_and_output(tmp_path, group, ending):
    """With a group open, the process ends without the interpreter's teardown (where gloo's threads
    abort it at random) but with its output; without one, as any Python program."""
    done = subprocess.run([sys.executable, "-c", ENDING_RANK, group, str(tmp_path / "store"), ending], cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == (3 if ending == "return" else 1), done.stderr
    assert done.stdout.startswith("buffered output")
    assert ("teardown" in done.stdout) == (group == "none")
    assert ("RuntimeError: own error" in done.stderr) == (ending == "raise")


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


@pytest.mark.parametrize("fail_rank", [1, 0])
def test_a_cli_rank_that_fails_on_its_own_shows_its_error(tiny_ckpt, tmp_path, fail_rank):  # noqa: F811
    """Each rank's status and stderr are its own, whichever rank fails (rank 0 writes the video)."""
    results = launch_cli(tiny_ckpt, tmp_path, fail_rank=fail_rank)
    (own_code, own_err), (peer_code, peer_err) = results[fail_rank], results[1 - fail_rank]
    assert own_code == 1, own_err
    assert "Traceback" in own_err and f"RuntimeError: probe: rank {fail_rank} fails on its own" in own_err
    assert "ParallelRunError" not in own_err and "another rank" not in own_err
    assert peer_code == 3, peer_err
    assert f"error: rank {1 - fail_rank} of 2 (sequence (Ulysses) x2): the run across processes stopped" in peer_err
    assert "If another rank failed or was killed, its own output has the cause" in peer_err
    assert not (tmp_path / "video.npz").exists()
