"""Sequence parallel (Ulysses) on diffusers' context-parallel engine.

The transformer declares its `_cp_plan` (transformer.py): split the video tokens at the first
block's input and the RoPE rows at the model's input, gather the video tokens after proj_out.
`apply_context_parallel` installs those split/gather hooks, and each block's attention runs
through `dispatch_attention_fn` with the parallel config (joint_attention.py): diffusers' Ulysses
all-to-all exchanges the sequence for heads, so each rank attends over all tokens for 1/N of the
heads. `ulysses_anything` lets the token counts (226/400 text tokens, any video size) split unevenly.
"""

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, ParallelConfig
from diffusers.hooks.context_parallel import apply_context_parallel
from torch.distributed.device_mesh import DeviceMesh

from .joint_attention import UlyssesJointAttnProcessor
from .layout import check_sequence_degree


def enable_sequence_parallel(transformer, mesh: DeviceMesh, device: torch.device) -> ParallelConfig:
    """Hooks and attention processors for a Ulysses split over mesh['ulysses'] (after any
    QKV fusion, fp8 or kernel choice: those replace the processors)."""
    degree = mesh["ulysses"].size()
    check_sequence_degree(degree, transformer.config.num_attention_heads)
    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=degree,
                                                                          ulysses_anything=True))
    # Only the (ring, ulysses) dims: diffusers before 0.42 flattened the whole mesh it was given into
    # the group its hooks gather over, which with a CFG dim mixed the two CFG halves.
    config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh["ring", "ulysses"])
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(UlyssesJointAttnProcessor(getattr(block.attn1.processor, "backend", "sdpa"), config))
    apply_context_parallel(transformer, config.context_parallel_config, transformer._cp_plan)
    return config
