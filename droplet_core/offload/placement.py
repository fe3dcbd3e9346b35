"""Where the components live during a generation: the offload modes behind one object.

- none: everything stays on the device.
- model: each component (T5, transformer, VAE) visits the device only while it is used.
- block_swap: the transformer's first N blocks and its small parts visit the device for the
  denoising loop, the other blocks are streamed in one at a time (block_swap.py); T5 and
  the VAE as in model.
- sequential: each layer of the transformer and T5 visits the device only for its own forward
  (sequential_offload.py); the VAE as in model.
With `text_encoder_on_cpu` T5 never moves: it encodes on the CPU in every mode.
"""

import contextlib

import torch

from .block_swap import BlockSwap
from .sequential import attach_sequential_offload
from ..transformer import BlockRunner

OFFLOAD_MODES = ("none", "model", "block_swap", "sequential", "auto")


def check_offload_mode(mode: str) -> None:
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode {mode!r}: use one of {', '.join(OFFLOAD_MODES)} "
                         f"(auto picks from free VRAM).")


class Placement:
    def __init__(self, mode: str, device, transformer, text_encoder_model, vae, blocks_on_device=None,
                 text_encoder_on_cpu: bool = False):
        check_offload_mode(mode)
        if mode == "auto":
            raise ValueError("offload 'auto' must be resolved to a mode first (see offload_plan.plan_offload).")
        self.mode, self.device = mode, torch.device(device)
        self.transformer = transformer
        self.swap = None
        self.left_in_place = (text_encoder_model,) if text_encoder_on_cpu else ()  # on_device does not move these
        if mode == "none":
            for module in (transformer, vae) + (() if text_encoder_on_cpu else (text_encoder_model,)):
                module.to(self.device)
        elif mode == "block_swap":
            count = len(transformer.transformer_blocks) if blocks_on_device is None else blocks_on_device
            self.swap = BlockSwap(transformer, self.device, count)
        elif mode == "sequential":
            attach_sequential_offload(transformer, self.device)
            self.left_in_place += (transformer,)
            if not text_encoder_on_cpu:
                attach_sequential_offload(text_encoder_model, self.device, groups=text_encoder_model.encoder.block)
                self.left_in_place += (text_encoder_model,)
        elif blocks_on_device is not None:
            raise ValueError(f"blocks_on_device is for offload 'block_swap' only (offload is {mode!r}).")

    @contextlib.contextmanager
    def on_device(self, module):
        """`module` on the device for the duration of the block, as the mode says."""
        if self.mode == "none" or any(module is kept for kept in self.left_in_place):
            yield module
            return
        swapping = self.swap is not None and module is self.transformer
        visit = self.swap.on_device() if swapping else _visit(module, self.device)
        try:
            with visit:
                yield module
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def block_runner(self, inner: BlockRunner) -> BlockRunner:
        return self.swap.wrap(inner) if self.swap is not None else inner


@contextlib.contextmanager
def _visit(module, device):
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
