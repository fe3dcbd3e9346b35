"""How N processes share one generation: the CFG degree times the sequence (Ulysses) degree.

Pure arithmetic, no torch.distributed: the CLI checks a layout before any process group exists.
- cfg: the [negative, positive] halves of the CFG batch run on different ranks (degree 2);
- sequence: the video tokens are split across ranks, attention exchanges heads (Ulysses), so
  the degree must divide the number of attention heads (48 in the release);
- auto: CFG split when guidance > 1 and N is even, the rest (N or N/2) as the sequence split.
"""

from dataclasses import dataclass
from typing import List

PARALLEL_MODES = ("auto", "sequence", "cfg", "none")


@dataclass(frozen=True)
class ParallelLayout:
    cfg: int = 1  # 1 or 2
    sequence: int = 1  # Ulysses degree

    @property
    def world_size(self) -> int:
        return self.cfg * self.sequence

    def describe(self) -> str:
        parts = ([f"CFG x{self.cfg}"] if self.cfg > 1 else []) + (
            [f"sequence (Ulysses) x{self.sequence}"] if self.sequence > 1 else [])
        return " + ".join(parts) or "none"


def valid_degrees(heads: int) -> List[int]:
    return [d for d in range(1, heads + 1) if heads % d == 0]


def check_sequence_degree(degree: int, heads: int) -> None:
    if heads % degree:
        options = ", ".join(str(d) for d in valid_degrees(heads))
        raise ValueError(f"sequence-parallel degree {degree} does not divide the model's {heads} attention heads "
                         f"(Ulysses gives each rank whole heads): valid degrees are {options}; with CFG parallel "
                         f"the process count is twice the degree.")


def plan_layout(mode: str, world_size: int, heads: int, guidance_scale: float) -> ParallelLayout:
    """The split of `world_size` processes for `mode` (see PARALLEL_MODES); refuses what cannot work."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}: use one of {', '.join(PARALLEL_MODES)}.")
    cfg_possible = guidance_scale > 1.0
    if mode == "none" or world_size == 1:
        return ParallelLayout()
    if mode == "cfg":
        if not cfg_possible:
            raise ValueError(f"parallel mode cfg needs guidance_scale > 1 (cfg; it is {guidance_scale:g}): without "
                             f"CFG there is one batch half; use parallel mode sequence.")
        if world_size != 2:
            raise ValueError(f"parallel mode cfg runs on exactly 2 processes, one per GPU ({world_size} asked): use "
                             f"2 (torchrun --nproc_per_node 2, or the node's gpus 2), or parallel mode auto to add a "
                             f"sequence split.")
        return ParallelLayout(cfg=2)
    cfg = 2 if mode == "auto" and cfg_possible and world_size % 2 == 0 else 1
    layout = ParallelLayout(cfg=cfg, sequence=world_size // cfg)
    check_sequence_degree(layout.sequence, heads)
    return layout
