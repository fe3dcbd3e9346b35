"""One generation across the processes torchrun started: the object the CLI and the pipeline use.

`start_parallel` plans the layout (refusing what cannot work before any model is loaded), joins
the process group and builds the mesh; `ParallelRun.attach(pipe)` installs the sequence split on
the transformer and hands the pipeline `wrap` (the CFG split) and `decode` (the tiled decode shared
out across the ranks, vae_decode.py; rank 0 alone keeps and writes the video). `guard()` turns a
failure of the distributed run (a peer killed or ended by its own error, a collective timed out)
into ParallelRunError naming this rank; this rank's own errors (a shape error, CUDA out of
memory) go through unchanged, so the user sees them as they are.
"""

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from .cfg import CfgParallelTransformer
from .layout import ParallelLayout, plan_layout
from ..configs import read_json
from .process_group import build_mesh, join_process_group, launched, rank_device
from .sequence import enable_sequence_parallel
from .vae_decode import decode_to_frames_across_ranks
from ..vae_ops import decode_to_frames

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 600.0  # per collective; the first step of a compiled model can take minutes
# gloo reports a peer that closed its connection (killed, or ended by its own error) and a timed-out
# collective as plain RuntimeErrors from its own sources: "[.../gloo/transport/tcp/pair.cc:553]
# Connection closed by peer ...", "[.../unbound_buffer.cc:129] Timed out waiting ..." (torch 2.13).
GLOO_ERROR = re.compile(r"gloo/\S+\.(cc|h):\d+\]")


class ParallelRunError(RuntimeError):
    """The distributed run stopped on this rank (see the message for which rank and why)."""


def from_the_group(error: BaseException) -> bool:
    """Whether `error` is the distributed run's rather than this rank's own: torch.distributed's
    DistError (NCCL's DistBackendError, the store's, the network's) or a gloo transport error."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and
                                                 GLOO_ERROR.search(str(error)) is not None)


@dataclass
class ParallelRun:
    layout: ParallelLayout
    rank: int
    device: torch.device
    mesh: DeviceMesh
    failed: bool = False

    @property
    def keeps_video(self) -> bool:
        """Rank 0 keeps and writes the video; the others hold the same latents and stop after the decode."""
        return self.rank == 0

    def decode(self, vae, latents: torch.Tensor, tiled: bool) -> Optional[torch.Tensor]:
        """vae_ops.decode_to_frames on rank 0, None on the others; every rank must call it. Tiled, each rank
        decodes a share of the tiles. Untiled (the reference's default), rank 0 decodes alone: the frame
        batches hand their causal-conv caches on, so they cannot run on different ranks unchanged."""
        if tiled:
            return decode_to_frames_across_ranks(vae, latents, self.rank, self.layout.world_size)
        return decode_to_frames(vae, latents) if self.keeps_video else None

    def check(self, request) -> None:
        if request.cache_threshold:
            raise ValueError("the step cache (cache_threshold) cannot run in parallel: each rank would decide to skip "
                             "steps from its own shard of the tokens. Use cache_threshold 0, or one process.")
        if self.layout.cfg > 1 and request.guidance_scale <= 1.0:
            raise ValueError(f"CFG parallel needs guidance_scale > 1 (it is {request.guidance_scale:g}).")

    def attach(self, pipe) -> None:
        if self.layout.sequence > 1:
            enable_sequence_parallel(pipe.transformer, self.mesh, self.device)
        pipe.parallel = self

    def wrap(self, model, request):
        """The model the sampler calls: with the CFG split when the layout has one."""
        self.check(request)
        return CfgParallelTransformer(model, self.mesh["cfg"]) if self.layout.cfg > 1 else model

    @contextlib.contextmanager
    def guard(self):
        """ParallelRunError for a failure of the group; any other error passes through as it is.
        After either, close() leaves the group to the process exit."""
        try:
            yield
        except BaseException as error:
            self.failed = True
            if isinstance(error, ParallelRunError) or not from_the_group(error):
                raise
            raise ParallelRunError(
                f"rank {self.rank} of {self.layout.world_size} ({self.layout.describe()}): the run across processes "
                f"stopped: {error}. If another rank failed or was killed, its own output has the cause; this rank "
                f"ends too.") from error

    def close(self) -> None:
        """Leaves the group; after a failure the process exit closes it (a destroy could wait on a dead peer)."""
        if dist.is_initialized() and not self.failed:
            dist.destroy_process_group()


def start_parallel(mode: str, device: str, heads: int, guidance_scale: float,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> Optional[ParallelRun]:
    """The run for this process, or None when it generates alone (one process, or --parallel none)."""
    layout = plan_layout(mode, launched().world_size, heads, guidance_scale)
    if layout.world_size == 1:
        return None
    rank_dev = rank_device(device)
    join_process_group(rank_dev, timeout_s)
    run = ParallelRun(layout, dist.get_rank(), rank_dev, build_mesh(layout, rank_dev, timeout_s))
    if run.rank == 0:
        logger.info("parallel: %s on %d processes (%s)", layout.describe(), layout.world_size, dist.get_backend())
    return run


def checkpoint_heads(ckpt) -> int:
    """The attention heads of a released folder's transformer, read before anything is loaded."""
    return int(read_json(Path(ckpt) / "transformer" / "config.json")["num_attention_heads"])
