"""Block swap: the first N transformer blocks stay on the device, the others are streamed in.

A swapped block lives in (pinned) CPU memory; its device copy is made just before it runs and
dropped right after. On CUDA the copy of the next swapped block runs on a side stream while
the current block computes, so at most two swapped blocks are on the device at a time. The
swap plugs into the transformer's `block_runner` hook and wraps any other runner (e.g. the
step cache), so it composes with it; a runner with a `uses_block(index)` method (StepCache)
is asked first, and a block it passes over is neither installed nor fetched.
"""

import contextlib
from typing import Dict, Tuple

import torch

from .parked_tensors import ParkedTensors
from ..transformer import BlockRunner, run_block


class BlockSwap:
    def __init__(self, transformer, device, blocks_on_device: int):
        blocks = transformer.transformer_blocks
        if not isinstance(blocks_on_device, int) or not 0 <= blocks_on_device <= len(blocks):
            raise ValueError(f"blocks_on_device {blocks_on_device!r} is out of range: this transformer has "
                             f"{len(blocks)} blocks, use 0 .. {len(blocks)} (more is faster and needs more VRAM), "
                             f"or offload 'auto' to pick it from free VRAM.")
        self.transformer, self.blocks_on_device = transformer, blocks_on_device
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.parked = {i: ParkedTensors(blocks[i], pin=cuda) for i in range(blocks_on_device, len(blocks))}
        self.pending: Dict[int, Tuple[list, object]] = {}
        self.fetches = 0  # device copies made; a test and the benchmark read it

    @contextlib.contextmanager
    def on_device(self):
        """The resident part (everything but the swapped blocks) visits the device."""
        self._move_resident(self.device)
        try:
            yield self.transformer
        finally:
            self.pending.clear()
            self._move_resident(torch.device("cpu"))

    def _move_resident(self, device) -> None:
        blocks = self.transformer.transformer_blocks
        for child in self.transformer.children():
            if child is not blocks:
                child.to(device)
        for block in blocks[:self.blocks_on_device]:
            block.to(device)
        for name, buffer in self.transformer._buffers.items():
            self.transformer._buffers[name] = buffer.to(device)

    def wrap(self, inner: BlockRunner = run_block) -> BlockRunner:
        """A block runner that streams swapped blocks around `inner`."""
        uses_block = getattr(inner, "uses_block", lambda index: True)

        def runner(index, block, hidden, encoder_hidden, temb, rotary, attention_options=None):
            used = uses_block(index)
            swapped = used and index in self.parked
            if swapped:
                self.parked[index].install(self._take(index))
            following = (index + 1) % len(self.transformer.transformer_blocks)
            wanted = used or following == 0  # a skipped step still needs block 0 next (the skip decision)
            if wanted and following in self.parked and following not in self.pending and following != index:
                self._prefetch(following)
            try:
                return inner(index, block, hidden, encoder_hidden, temb, rotary, attention_options)
            finally:
                if swapped:
                    self.parked[index].park()
        return runner

    def _prefetch(self, index: int) -> None:
        self.fetches += 1
        if self.stream is None:
            self.pending[index] = (self.parked[index].fetch(self.device), None)
            return
        with torch.cuda.stream(self.stream):
            copies = self.parked[index].fetch(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pending[index] = (copies, done)

    def _take(self, index: int) -> list:
        if index not in self.pending:
            self._prefetch(index)
        copies, done = self.pending.pop(index)
        if done is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            for tensor in copies:  # made on the side stream, freed after use on this one
                tensor.record_stream(compute)
        return copies
