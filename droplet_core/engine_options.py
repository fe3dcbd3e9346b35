"""Speed and memory options of the engine, and the order in which they change a transformer.

Order: LoRAs merge into full-precision weights, then QKV fusion (it renames the projections),
then fp8 storage, then the attention kernel, then torch.compile per block (compiling the
blocks, not the model, keeps the block runner, offload hooks and step cache outside the graph).
"""

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from .attention import ATTENTION_BACKENDS, attention_kernel, fuse_qkv, set_attention
from .fp8 import quantize_blocks
from .offload.placement import check_offload_mode

logger = logging.getLogger(__name__)
WEIGHT_FORMATS = ("default", "fp8_e4m3fn")


@dataclass(frozen=True)
class EngineOptions:
    offload: str = "none"  # none, model, block_swap, sequential, auto (placement.py)
    blocks_on_device: Optional[int] = None  # block_swap: blocks kept on the device (None: from free VRAM)
    weights: str = "default"  # "default" = the compute dtype; "fp8_e4m3fn" = fp8 block Linear weights
    attention: str = "sdpa"
    fuse_qkv: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    text_encoder_on_cpu: bool = False  # T5 stays in CPU memory and encodes there (no VRAM for it)
    text_encoder_fp8: bool = False  # T5's Linear weights (but wo) stored in fp8

    def check(self) -> "EngineOptions":
        check_offload_mode(self.offload)
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weights format {self.weights!r}: use one of {', '.join(WEIGHT_FORMATS)}.")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}: use one of "
                             f"{', '.join(ATTENTION_BACKENDS)}.")
        attention_kernel(self.attention)  # a missing `sageattention` fails here, before any loading
        if self.compile and self.offload == "sequential":
            raise ValueError("compile and offload 'sequential' cannot be combined (its per-layer hooks swap weights "
                             "inside the compiled blocks): use offload 'block_swap' with compile, or drop compile.")
        if self.blocks_on_device is not None and self.offload not in ("block_swap", "auto"):
            raise ValueError(f"blocks_on_device is for offload 'block_swap' (offload is {self.offload!r}).")
        return self

    @property
    def keep_fp8(self) -> bool:
        return self.weights == "fp8_e4m3fn"


def offload_mode(offload) -> str:
    """The old boolean `offload` (True = components visit the device while used) as a mode."""
    if isinstance(offload, bool):
        return "model" if offload else "none"
    return offload


def compile_blocks(transformer, backend: str = "inductor") -> None:
    for block in transformer.transformer_blocks:
        block.compile(backend=backend, dynamic=False)


def prepare_transformer(transformer, options: EngineOptions, dtype: torch.dtype) -> None:
    """Applies fusion, fp8, attention kernel and compilation in place (after any LoRA merge)."""
    if options.fuse_qkv:
        fuse_qkv(transformer, dtype)
    if options.keep_fp8:
        logger.info("fp8 storage: %d block Linear layers", quantize_blocks(transformer))
    if options.attention != "sdpa" or options.fuse_qkv:
        set_attention(transformer, options.attention)
    if options.compile:
        compile_blocks(transformer, options.compile_backend)
