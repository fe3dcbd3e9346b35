"""TeaCache-style step caching: skip the block stack when its input barely changed.

At block 0 of every step the modulated input (norm1 of the first block) is compared with the
previous step's; the relative L1 changes accumulate, and while the sum stays under
`threshold` the whole stack is skipped and the last computed residual (stack output minus
stack input) is reused. Off by default; threshold 0 computes every step (identical output).
Plain relative L1 is used (TeaCache fits a polynomial per model; we have none for DropletVideo).
"""

from .transformer import run_block


class StepCache:
    """A block runner for DropletVideoTransformer3DModel.forward(block_runner=...)."""

    def __init__(self, threshold: float, num_layers: int):
        if threshold < 0:
            raise ValueError(f"cache threshold {threshold} must be >= 0 (0 = off; try 0.05 .. 0.2).")
        self.threshold, self.last_index = threshold, num_layers - 1
        self.previous = self.inputs = None
        self.accumulated = 0.0
        self.residuals = None
        self.skipping = False
        self.skipped_steps = self.computed_steps = 0

    def _skip(self, modulated) -> bool:
        previous, self.previous = self.previous, modulated
        if previous is None or self.residuals is None or previous.shape != modulated.shape or self.threshold == 0:
            self.accumulated = 0.0
            return False
        change = ((modulated - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        self.accumulated += change
        if self.accumulated < self.threshold:
            return True
        self.accumulated = 0.0
        return False

    def uses_block(self, index: int) -> bool:
        """Whether this call needs the block's weights: a skipped step only reads block 0 (its
        norm1 decides the skip). Block swap asks, so a skipped step streams nothing."""
        return index == 0 or not self.skipping

    def __call__(self, index, block, hidden, encoder_hidden, temb, rotary):
        if index == 0:
            self.skipping = self._skip(block.norm1(hidden, encoder_hidden, temb)[0])
            self.inputs = (hidden, encoder_hidden)
            if self.skipping:
                self.skipped_steps += 1
                return hidden + self.residuals[0], encoder_hidden + self.residuals[1]
            self.computed_steps += 1
        elif self.skipping:
            return hidden, encoder_hidden
        hidden, encoder_hidden = run_block(index, block, hidden, encoder_hidden, temb, rotary)
        if index == self.last_index:
            self.residuals = (hidden - self.inputs[0], encoder_hidden - self.inputs[1])
        return hidden, encoder_hidden
