"""TeaCache-style step caching: skip the block stack when its input barely changed.

At block 0 of every step the modulated input (norm1 of the first block) is compared with the
previous step's; the relative L1 changes accumulate, and while the sum stays under
`threshold` the whole stack is skipped and the last computed residual (stack output minus
stack input) is reused. Off by default; threshold 0 computes every step (identical output).
Plain relative L1 is used (TeaCache fits a polynomial per model; we have none for DropletVideo).
With long video each temporal window keeps its own history (`select_window`).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from .transformer import run_block


@dataclass
class _History:
    previous: Optional[torch.Tensor] = None  # the last step's modulated input
    inputs: Optional[tuple] = None  # this step's stack input (hidden, encoder_hidden)
    residuals: Optional[tuple] = None  # the last computed stack output minus its input
    accumulated: float = 0.0
    skipping: bool = False


class StepCache:
    """A block runner for DropletVideoTransformer3DModel.forward(block_runner=...)."""

    def __init__(self, threshold: float, num_layers: int):
        if threshold < 0:
            raise ValueError(f"cache threshold {threshold} must be >= 0 (0 = off; try 0.05 .. 0.2).")
        self.threshold, self.last_index = threshold, num_layers - 1
        self.windows = {}
        self.select_window(0)
        self.skipped_steps = self.computed_steps = 0

    def select_window(self, start: int) -> None:
        """Long video: the window starting at latent frame `start` runs next (SlidingWindowTransformer
        calls this), so it is compared with its own previous step, not with its neighbour."""
        self.history = self.windows.setdefault(start, _History())

    def _skip(self, modulated) -> bool:
        history = self.history
        previous, history.previous = history.previous, modulated
        if previous is None or history.residuals is None or previous.shape != modulated.shape or self.threshold == 0:
            history.accumulated = 0.0
            return False
        change = ((modulated - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        history.accumulated += change
        if history.accumulated < self.threshold:
            return True
        history.accumulated = 0.0
        return False

    def uses_block(self, index: int) -> bool:
        """Whether this call needs the block's weights: a skipped step only reads block 0 (its
        norm1 decides the skip). Block swap asks, so a skipped step streams nothing."""
        return index == 0 or not self.history.skipping

    def __call__(self, index, block, hidden, encoder_hidden, temb, rotary, attention_options=None):
        history = self.history
        if index == 0:
            history.skipping = self._skip(block.norm1(hidden, encoder_hidden, temb)[0])
            history.inputs = (hidden, encoder_hidden)
            if history.skipping:
                self.skipped_steps += 1
                return hidden + history.residuals[0], encoder_hidden + history.residuals[1]
            self.computed_steps += 1
        elif history.skipping:
            return hidden, encoder_hidden
        hidden, encoder_hidden = run_block(index, block, hidden, encoder_hidden, temb, rotary, attention_options)
        if index == self.last_index:
            history.residuals = (hidden - history.inputs[0], encoder_hidden - history.inputs[1])
        return hidden, encoder_hidden
