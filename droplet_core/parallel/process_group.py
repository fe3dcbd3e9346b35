"""torch.distributed for one generation across processes: join torchrun's group, build the mesh.

gloo on CPU, NCCL on CUDA (one GPU per rank: cuda:LOCAL_RANK). Every group carries the same
timeout, so a rank that hangs in a collective (its peer stuck, not dead) ends with an error after
`timeout_s` instead of waiting forever; a peer that dies closes its connections and the others
fail at their next collective. `end_process` ends a rank with its own exit status, group or not.
"""

import os
import sys
import traceback
from datetime import timedelta
from typing import Callable, NamedTuple, NoReturn

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .layout import ParallelLayout

# (cfg, ring, ulysses): ring stays 1; diffusers' ContextParallelConfig reads the last two by name.
MESH_DIMS = ("cfg", "ring", "ulysses")


class Launch(NamedTuple):
    rank: int
    world_size: int


def launched() -> Launch:
    """This process's rank and the process count torchrun started (0 and 1 without torchrun)."""
    return Launch(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def rank_device(device: str) -> torch.device:
    """cuda -> this rank's GPU (LOCAL_RANK); cpu stays cpu."""
    if torch.device(device).type != "cuda":
        return torch.device(device)
    gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(gpu)
    return gpu


def join_process_group(device: torch.device, timeout_s: float) -> None:
    """init_process_group from torchrun's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE)."""
    if dist.is_initialized():
        return
    # "cpu:gloo", not "gloo": diffusers' Ulysses gathers the ranks' token counts on the CPU only when the
    # group's backend name says cpu, else on torch.accelerator (CUDA on a CUDA build of torch, even with no GPU).
    backend = "nccl" if device.type == "cuda" else "cpu:gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def _group_options(backend: str, timeout_s: float):
    options = dist.ProcessGroupNCCL.Options() if backend == "nccl" else dist.ProcessGroupGloo._Options()
    options._timeout = timedelta(seconds=timeout_s)
    return backend, options


def build_mesh(layout: ParallelLayout, device: torch.device, timeout_s: float) -> DeviceMesh:
    """A (cfg, 1, ulysses) mesh over all ranks; neighbouring ranks share a sequence group."""
    if layout.world_size != dist.get_world_size():
        raise ValueError(f"the layout {layout.describe()} needs {layout.world_size} processes, "
                         f"{dist.get_world_size()} were started.")
    override = _group_options(dist.get_backend(), timeout_s)
    mesh = init_device_mesh(device.type, (layout.cfg, 1, layout.sequence), mesh_dim_names=MESH_DIMS,
                            backend_override={name: override for name in MESH_DIMS})
    mesh["ring", "ulysses"]._flatten(backend_override=override)  # the group diffusers' hooks use, same timeout
    return mesh


def end_process(main: Callable[[], int]) -> NoReturn:
    """Runs a rank's `main` and exits with its status (an exception: its traceback and status 1).

    A run that failed leaves its group to the process exit (destroying it could wait on a dead peer).
    The interpreter's exit would then tear gloo's threads down while they still run, and the process
    aborts instead ("terminate called without an active exception", SIGABRT, as often as not): the
    status that says whose error it was is lost. So with a group still open the process ends at once
    (os._exit) after flushing its output."""
    try:
        code = main()
    except SystemExit:
        raise
    except BaseException:
        if not dist.is_initialized():
            raise
        traceback.print_exc()
        code = 1
    if dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
