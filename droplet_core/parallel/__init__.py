"""Several processes on one video: sequence parallel (Ulysses, on diffusers' context-parallel
engine) and CFG parallel. docs/parallel.md says why this engine and how the pieces fit."""

from .layout import PARALLEL_MODES, ParallelLayout, check_sequence_degree, plan_layout, valid_degrees
from .process_group import end_process, launched
from .run import DEFAULT_TIMEOUT_S, ParallelRun, ParallelRunError, checkpoint_heads, start_parallel

__all__ = ["PARALLEL_MODES", "ParallelLayout", "check_sequence_degree", "plan_layout", "valid_degrees",
           "end_process", "launched", "DEFAULT_TIMEOUT_S", "ParallelRun", "ParallelRunError", "checkpoint_heads",
           "start_parallel"]
