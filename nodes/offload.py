"""Where the transformer lives while the sampler runs: the loaders' `offload` input.

- comfy_model_management (default): ComfyUI moves the whole transformer to the GPU for sampling
  and off it when another model needs the room.
- none: the transformer never leaves the GPU (its patcher's offload device is the GPU, as
  ComfyUI's --gpu-only does for every model).
- block_swap: the patcher keeps the transformer on the offload device, so LoRA patches apply
  there; the sampler keeps all but `swap_blocks` blocks on the GPU and streams the others in,
  one block ahead (droplet_core/block_swap.py).
- sequential: as block_swap, but each layer visits the GPU only for its own forward
  (droplet_core/sequential_offload.py). The slowest and the leanest.
- auto: one of the above, picked at load time by droplet_core/offload_plan.py from the GPU's
  memory (total, less ComfyUI's reserve: ComfyUI frees other models for the sampler) for the
  release's default video, 672x384x85 with CFG.
"""

import contextlib
import logging

import comfy.model_management
import torch

from ..droplet_core.block_swap import BlockSwap
from ..droplet_core.offload_plan import Workload, component_bytes, module_bytes, resolve_offload
from ..droplet_core.sequential_offload import attach_sequential_offload
from .components import load_for_compute, make_patcher

logger = logging.getLogger(__name__)

COMFY = "comfy_model_management"
OFFLOAD_MODES = (COMFY, "none", "block_swap", "sequential", "auto")
STAYS_OFFLOADED = ("block_swap", "sequential")  # the sampler moves the weights, not ComfyUI
OFFLOAD_INPUT = (list(OFFLOAD_MODES), {"default": COMFY, "tooltip": (
    "Where the transformer lives while sampling. comfy_model_management: ComfyUI moves it to the GPU while "
    "sampling and off when memory is needed. none: it stays on the GPU. block_swap: swap_blocks of its blocks stay "
    "in CPU memory and are streamed in one block ahead (for 12-16 GB cards). sequential: every layer is streamed "
    "(smallest VRAM, slowest). auto: picked from the GPU's memory. The output is the same in every mode.")})


def check_offload(mode: str) -> None:
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode {mode!r}: use one of {', '.join(OFFLOAD_MODES)}.")


def resolve_node_offload(mode: str, swap_blocks: int, transformer, dtype: torch.dtype):
    """(mode, swap_blocks) to build with: checks the inputs, decides 'auto' and block_swap's
    swap_blocks 0 (= from the GPU's memory)."""
    check_offload(mode)
    blocks = len(transformer.transformer_blocks)
    if not 0 <= swap_blocks <= blocks:
        raise ValueError(f"swap_blocks {swap_blocks} is more than this transformer's {blocks} blocks: use 0 .. "
                         f"{blocks}.")
    if swap_blocks and mode != "block_swap":
        raise ValueError(f"swap_blocks {swap_blocks} is for offload block_swap (offload is {mode}): set offload to "
                         f"block_swap, or swap_blocks to 0.")
    if mode not in ("auto", "block_swap") or swap_blocks:
        return mode, swap_blocks
    device = comfy.model_management.get_torch_device()
    budget = None
    if torch.device(device).type == "cuda":
        budget = comfy.model_management.get_total_memory(device) - comfy.model_management.extra_reserved_memory()
    work = Workload(act_bytes=torch.empty((), dtype=dtype).element_size())
    planned, on_device = resolve_offload(mode, None, device, component_bytes(transformer), transformer.config, work,
                                         free_bytes=budget)
    if planned in ("none", "model"):
        planned = COMFY
    resolved = (planned, blocks - on_device if planned == "block_swap" else 0)
    logger.info("DropletVideo offload %s: %s, swap_blocks %d", mode, *resolved)
    return resolved


def transformer_patcher(transformer, mode: str):
    """The patcher for a resolved mode: block_swap and sequential load onto the offload device
    (the sampler streams the weights), none offloads onto the GPU itself (it never leaves)."""
    gpu, parking = comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
    return make_patcher(transformer, load_device=parking if mode in STAYS_OFFLOADED else gpu,
                        offload_device=gpu if mode == "none" else parking)


def swap_resident_bytes(transformer, swap_blocks: int) -> int:
    """Device bytes of a block-swapped transformer: all but the swapped blocks, plus two in flight."""
    block_bytes = [module_bytes(block) for block in transformer.transformer_blocks]
    return module_bytes(transformer) - sum(block_bytes[len(block_bytes) - swap_blocks:]) + 2 * max(block_bytes)


@contextlib.contextmanager
def transformer_for_sampling(model, memory_required: int, device):
    """(transformer, wrap_runner) for the denoising loop, placed as model.offload says;
    wrap_runner(runner) adds the block streaming around a block runner."""
    if model.offload not in STAYS_OFFLOADED:
        yield load_for_compute(model.patcher, memory_required), lambda runner: runner
        return
    module = model.patcher.model.module
    resident = (swap_resident_bytes(module, model.swap_blocks) if model.offload == "block_swap"
                else component_bytes(module).largest_layer)
    # Room first (this may unload our own patcher on a CPU-only ComfyUI), then load: LoRA patches go in.
    comfy.model_management.free_memory(memory_required + resident, device)
    transformer = load_for_compute(model.patcher, 0)
    if model.offload == "block_swap":
        swap = BlockSwap(transformer, device, len(transformer.transformer_blocks) - model.swap_blocks)
        with swap.on_device():
            yield transformer, swap.wrap
        return
    sequential = attach_sequential_offload(transformer, device)
    try:
        yield transformer, lambda runner: runner
    finally:
        sequential.remove()
