"""One sampler call split across worker processes, run from a process outside the group (the
ComfyUI node "DropletVideo Sampler (multi-GPU)").

The caller writes a job folder (`write_job`: job.json with the settings, inputs.safetensors with
the tensors), starts one worker per device (`WorkerGroup`: `python -m droplet_core.parallel.
sample_worker <folder>` with the environment torchrun would give each rank, the pack's root on
PYTHONPATH) and waits. Rank 0 prints one progress line per step on stdout and writes the final
latents into the folder; every rank writes its output to rank<N>.log. The caller owns the
processes, not a torchrun agent: a rank that exits with an error of its own stops the others at
once, Cancel (the caller's `poll`) and the caller's own errors kill them all, and the error names
the rank with the end of its log: the rank with its own error (its traceback), never one that
stopped because a peer failed, whichever of them ends first.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ..sample_plan import SampleInputs, SamplingPlan

PACK_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds droplet_core/
WORKER = "droplet_core.parallel.sample_worker"
JOB, INPUTS, LATENTS = "job.json", "inputs.safetensors", "latents.safetensors"
KNOWN = "known_latent_frames"
PROGRESS = "droplet-step"  # rank 0's stdout: "droplet-step <step> <steps>", one line per finished step
POLL_S = 0.1
STOPPED_BY_PEER = 3  # a worker's exit status when the run failed elsewhere (ParallelRunError), as the CLI's
OWN_ERRORS = (1, 2)  # a worker's own error (traceback) or refused setting: the cause of a failed run
LOG_TAIL_LINES = 25


@dataclass
class SampleJob:
    """What each worker needs besides the tensors: the transformer as the loader built it, and the
    arguments of sample_plan.sample."""

    transformer_path: str
    precision: str  # bf16, fp16, fp32 (pipeline.DTYPES)
    weight_format: str  # engine_options.WEIGHT_FORMATS
    attention: str
    plan: SamplingPlan
    latent_size: List[int]  # [F, h, w]
    parallel: str  # layout.PARALLEL_MODES
    device: str  # cuda (rank r on cuda:r) or cpu (gloo)
    timeout_s: float  # per collective


def write_job(folder: Path, job: SampleJob, inputs: SampleInputs) -> None:
    """The job's settings as JSON and its inputs' tensors (those that are set) as safetensors."""
    (Path(folder) / JOB).write_text(json.dumps(asdict(job)))
    if inputs.prompt_schedule:
        raise ValueError("a prompt schedule needs long_video, which the multi-GPU sampler does not run: use the "
                         "DropletVideo Sampler.")
    tensors = {name: t.detach().cpu().contiguous() for name, t in vars(inputs).items() if isinstance(t, torch.Tensor)}
    tensors[KNOWN] = torch.tensor(inputs.known_latent_frames)  # a continuation's (an int, in the same file)
    save_file(tensors, str(Path(folder) / INPUTS))


def read_job(folder: Path) -> Tuple[SampleJob, SampleInputs]:
    settings = json.loads((Path(folder) / JOB).read_text())
    job = SampleJob(**{**settings, "plan": SamplingPlan(**settings["plan"])})
    tensors = load_file(str(Path(folder) / INPUTS))
    known = int(tensors.pop(KNOWN))
    return job, SampleInputs(**tensors, known_latent_frames=known)


def read_latents(folder: Path) -> torch.Tensor:
    """Rank 0's final latents [1, F, C, h, w] (fp32, the transformer's space)."""
    return load_file(str(Path(folder) / LATENTS))["latents"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cause_order(code: int) -> int:
    """Which failed worker's log shows the cause, lowest first: its own error (OWN_ERRORS), then a
    signal (killed: out of host memory, or NCCL's watchdog aborting it), last STOPPED_BY_PEER (its
    collectives ended because another rank failed)."""
    return 0 if code in OWN_ERRORS else 2 if code == STOPPED_BY_PEER else 1


class WorkerGroupError(RuntimeError):
    """A worker exited with an error."""


class WorkerGroup:
    def __init__(self, folder: Path, world_size: int, device: str):
        self.folder, self.world_size, self.device = Path(folder), world_size, device
        self.steps: queue.SimpleQueue = queue.SimpleQueue()
        port = free_port()
        self.procs: List[subprocess.Popen] = []
        try:
            for rank in range(world_size):
                self.procs.append(self._start(rank, port))
        except BaseException:
            self.stop()
            raise
        self.reader = threading.Thread(target=self._read_progress, args=(self.procs[0].stdout,), daemon=True)
        self.reader.start()

    def _start(self, rank: int, port: int) -> subprocess.Popen:
        paths = [str(PACK_ROOT), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(self.world_size), "LOCAL_WORLD_SIZE": str(self.world_size)}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.world_size)))  # as torchrun
        if self.device == "cpu":  # CPU ranks take no GPU memory, even when ComfyUI runs with --cpu
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(self.folder / f"rank{rank}.log", "wb") as log:
            return subprocess.Popen([sys.executable, "-m", WORKER, str(self.folder)], cwd=self.folder, env=env,
                                    stdout=subprocess.PIPE if rank == 0 else log, stderr=log)

    def _read_progress(self, stream) -> None:
        with stream:  # until rank 0 exits or is killed
            for line in stream:
                parts = line.decode(errors="replace").split()
                if len(parts) == 3 and parts[0] == PROGRESS:
                    self.steps.put((int(parts[1]) - 1, int(parts[2])))

    def wait(self, on_step: Callable[[int, int], None], poll: Callable[[], None]) -> None:
        """Until every rank has exited 0. on_step(step index, steps) per finished step; poll() between
        them (raising from either stops the run, as Cancel does); WorkerGroupError when a rank fails."""
        try:
            while True:
                try:
                    on_step(*self.steps.get(timeout=POLL_S))
                except queue.Empty:
                    poll()
                codes = [p.poll() for p in self.procs]
                rank = self._cause(codes)
                if rank is not None:
                    raise WorkerGroupError(self._report(rank, f"exited with status {codes[rank]}"))
                if all(code == 0 for code in codes):
                    break
            self.reader.join(timeout=10)
            while not self.steps.empty():
                on_step(*self.steps.get())
        finally:
            self.stop()

    @staticmethod
    def _cause(codes: List[Optional[int]]) -> Optional[int]:
        """The failed rank whose log shows the cause, or None while there is none yet to show. A rank that
        stopped because a peer failed (STOPPED_BY_PEER) is not the cause: while other ranks still run (the
        failing one may still be ending: its connections close before its process is gone), wait for them;
        they end too, at their next collective or its timeout."""
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if not failed:
            return None
        rank = min(failed, key=lambda r: (cause_order(codes[r]), r))
        if codes[rank] == STOPPED_BY_PEER and None in codes:
            return None
        return rank

    def _report(self, rank: int, what: str) -> str:
        lines = (self.folder / f"rank{rank}.log").read_text(errors="replace").strip().splitlines()
        tail = "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"
        return (f"multi-GPU sampling: worker rank {rank} of {self.world_size} {what}; the other workers were "
                f"stopped. The end of its output:\n{tail}")

    def stop(self) -> None:
        """Kills the ranks still running (each is a plain process with no children of its own)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
