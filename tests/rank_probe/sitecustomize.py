"""Test probes in rank processes (multi-GPU workers, CLI ranks under a torchrun-like launch).

Python imports this module at start-up when this folder is on PYTHONPATH; it does nothing unless
DROPLET_PROBE_DIR is set. Then diffusers' CogVideoXBlock.forward is wrapped so that, at the first
block call of the process (block 0 of the first step, after the sequence split):
- the rank writes probe<RANK>.json in DROPLET_PROBE_DIR: {"block_input": the hidden states'
  shape}, i.e. its share of the CFG batch and of the video tokens;
- with DROPLET_PROBE_FAIL_RANK=<RANK>, that rank then raises its own RuntimeError, as a shape
  error or CUDA out of memory would.
"""

import json
import os
from pathlib import Path

FAILURE = "probe: rank {rank} fails on its own, with hidden states {shape}"


def install(folder: Path) -> None:
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock

    forward, rank, seen = CogVideoXBlock.forward, int(os.environ.get("RANK", "0")), []
    fail = os.environ.get("DROPLET_PROBE_FAIL_RANK") == str(rank)

    def probed(self, hidden_states, *args, **kwargs):
        if not seen:
            seen.append(list(hidden_states.shape))
            (folder / f"probe{rank}.json").write_text(json.dumps({"block_input": seen[0]}))
            if fail:
                raise RuntimeError(FAILURE.format(rank=rank, shape=seen[0]))
        return forward(self, hidden_states, *args, **kwargs)

    CogVideoXBlock.forward = probed


if os.environ.get("DROPLET_PROBE_DIR"):
    install(Path(os.environ["DROPLET_PROBE_DIR"]))
