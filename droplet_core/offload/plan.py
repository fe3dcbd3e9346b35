"""Picking an offload mode from free VRAM: a pure function of (free bytes, sizes).

The estimate, per mode (bytes):
- weights: measured from the loaded modules (`component_bytes`), or from a config built on the
  meta device (`transformer_bytes`); fp8 storage counts 1 byte per block Linear weight.
- transformer activations: batch x tokens x act_bytes x 16 x inner_dim, tokens = text tokens +
  latent frames x (h/16) x (w/16); batch is 2 with CFG. bench/vram_trace.py traces 12.8 x
  inner_dim at the release defaults (the feed-forward's 4 x dim activation and its GELU output,
  the hidden and text states, q/k/v and residuals; SDPA's fused kernels keep no tokens^2 matrix).
- VAE decode, which needs more than the conditioning encode: 17,500 x H x W x act_bytes with
  this repo's lean decode, whatever the frame count (the decoder works on 2 latent frames at a
  time; traced 13,900), or with tiling 26,000 x the tile's pixels (at most 240 x 360; traced
  about 19,000), plus the decoded video twice (the frame batches and their concatenation).
  Measured on the CPU, peaks run 13% (VAE) and 20% (transformer) above the traced ones
  (`bench/vram_trace.py --calibrate`); the factors above include that.
- a fixed margin of 1.5 GiB for the CUDA context, kernel workspaces and fragmentation.
The first mode that fits wins: none (everything resident), model (one component at a time),
block_swap (resident non-block weights + N blocks + 2 blocks in flight), sequential.
"""

import logging
from dataclasses import dataclass

import torch

from .. import shapes

logger = logging.getLogger(__name__)

MARGIN_BYTES = int(1.5 * 2**30)
ACTIVATION_UNITS = 16  # x inner_dim bytes-per-element per token and batch entry
VAE_DECODE_PER_PIXEL = 17_500
VAE_TILED_DECODE_PER_PIXEL = 26_000
VAE_TILE = (240, 360)  # diffusers' CogVideoX tile in pixels (sample size / 2)
# The conditioning encode, in 4-frame batches with read-once caches: traced 2.5 GiB (tiled 1.4 GiB)
# at 672x384 bf16 whatever the frame count, i.e. about 5,100 (tiled 8,500) x pixels x act_bytes.
VAE_ENCODE_PER_PIXEL = 5_800
VAE_TILED_ENCODE_PER_PIXEL = 9_600


@dataclass(frozen=True)
class ModelBytes:
    block: int  # one transformer block's weights (they are all the same size)
    num_blocks: int
    transformer_other: int  # embeddings, final norms, proj_out
    text_encoder: int
    vae: int
    largest_layer: int  # what sequential offload keeps on the device at a time

    @property
    def transformer(self) -> int:
        return self.block * self.num_blocks + self.transformer_other


@dataclass(frozen=True)
class Workload:
    width: int = 672
    height: int = 384
    frames: int = 85
    text_tokens: int = 400  # the reference CLI's max_sequence_length
    batch: int = 2  # CFG batches [negative, positive]
    act_bytes: int = 2  # bf16/fp16 activations
    tiled_vae: bool = False


@dataclass(frozen=True)
class OffloadPlan:
    mode: str
    blocks_on_device: int = 0
    needed_bytes: int = 0
    reason: str = ""


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def module_bytes(module: torch.nn.Module) -> int:
    return _tensor_bytes([*module.parameters(), *module.buffers()])


def component_bytes(transformer, text_encoder_model=None, vae=None) -> ModelBytes:
    """Weight bytes of loaded (or meta-device) modules, in their current dtypes. A component left
    out (None) counts 0: ComfyUI's nodes plan the transformer alone, it swaps the others itself."""
    blocks = transformer.transformer_blocks
    block = max(module_bytes(b) for b in blocks)
    parts = [part for part in (transformer, text_encoder_model) if part is not None]
    leaves = [m for part in parts for m in part.modules() if not list(m.children())]
    largest = max(_tensor_bytes(m.parameters(recurse=False)) for m in leaves)
    other = module_bytes(transformer) - block * len(blocks)
    return ModelBytes(block=block, num_blocks=len(blocks), transformer_other=other,
                      text_encoder=module_bytes(text_encoder_model) if text_encoder_model is not None else 0,
                      vae=module_bytes(vae) if vae is not None else 0, largest_layer=largest)


def activation_bytes(config, tokens: int, batch: int, act_bytes: int) -> int:
    """Peak activations of one transformer forward over `tokens` (text + video) tokens."""
    return batch * tokens * act_bytes * ACTIVATION_UNITS * config.inner_dim


def transformer_activation_bytes(config, work: Workload) -> int:
    patch = config.patch_size * shapes.SPATIAL_COMPRESSION
    tokens = work.text_tokens + shapes.latent_frames(work.frames) * (work.height // patch) * (work.width // patch)
    return activation_bytes(config, tokens, work.batch, work.act_bytes)


def vae_encode_bytes(work: Workload) -> int:
    if work.tiled_vae:
        working = VAE_TILED_ENCODE_PER_PIXEL * min(work.height, VAE_TILE[0]) * min(work.width, VAE_TILE[1])
    else:
        working = VAE_ENCODE_PER_PIXEL * work.height * work.width
    return (working + 3 * work.frames * work.height * work.width) * work.act_bytes  # plus the input video


def vae_decode_bytes(work: Workload) -> int:
    if work.tiled_vae:
        working = VAE_TILED_DECODE_PER_PIXEL * min(work.height, VAE_TILE[0]) * min(work.width, VAE_TILE[1])
    else:
        working = VAE_DECODE_PER_PIXEL * work.height * work.width
    decoded = shapes.decoded_frames(shapes.latent_frames(work.frames))  # quirk 3: 85 -> 88
    return (working + 2 * 3 * decoded * work.height * work.width) * work.act_bytes


def plan_offload(free_bytes: int, sizes: ModelBytes, config, work: Workload = Workload()) -> OffloadPlan:
    """The fastest mode whose estimate fits in `free_bytes` (torch.cuda.mem_get_info()[0])."""
    act = transformer_activation_bytes(config, work)
    vae = sizes.vae + vae_decode_bytes(work)
    budget = free_bytes - MARGIN_BYTES
    needs = {"none": sizes.transformer + sizes.text_encoder + sizes.vae + max(act, vae - sizes.vae),
             "model": max(sizes.transformer + act, sizes.text_encoder, vae)}
    for mode in ("none", "model"):
        if needs[mode] <= budget:
            return OffloadPlan(mode, sizes.num_blocks, needs[mode], f"{mode}: {_gib(needs[mode])} needed")
    swap_fixed = sizes.transformer_other + 2 * sizes.block + act
    if max(swap_fixed, sizes.text_encoder, vae) <= budget:
        blocks = min(sizes.num_blocks - 1, (budget - swap_fixed) // sizes.block)
        needed = swap_fixed + blocks * sizes.block
        return OffloadPlan("block_swap", int(blocks), needed,
                           f"block_swap: {blocks} of {sizes.num_blocks} blocks resident, {_gib(needed)} needed")
    needed = sizes.largest_layer + max(act, vae)
    return OffloadPlan("sequential", 0, needed, f"sequential: {_gib(needed)} needed "
                       f"({'fits' if needed <= budget else 'may not fit; try VAE tiling, T5 on the CPU or a smaller size'})")


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def resolve_offload(mode: str, blocks_on_device, device, sizes: ModelBytes, config, work: Workload,
                    free_bytes=None):
    """(mode, blocks_on_device) with 'auto' and a missing block count decided from free VRAM
    (`free_bytes`, or else torch.cuda.mem_get_info). Off CUDA there is no VRAM to plan for: auto
    is none, block_swap keeps half the blocks."""
    if mode not in ("auto", "block_swap") or (mode == "block_swap" and blocks_on_device is not None):
        return mode, blocks_on_device
    if torch.device(device).type != "cuda":
        return ("none", None) if mode == "auto" else (mode, sizes.num_blocks // 2)
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    plan = plan_offload(free_bytes, sizes, config, work)
    logger.info("offload plan: %s", plan.reason)
    if mode == "block_swap":
        return mode, plan.blocks_on_device if plan.mode in ("block_swap", "sequential") else sizes.num_blocks
    return plan.mode, plan.blocks_on_device if plan.mode == "block_swap" else None
