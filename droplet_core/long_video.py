"""Long video: temporal sliding windows so the positional table never runs out (quirk 2).

The transformer only knows `config.latent_frames` latent frames. For longer videos each step
predicts overlapping windows of that length and blends them with linear ramps over the
overlap, so window borders carry no seam; the scheduler then steps the whole latent video.
`SlidingWindowTransformer` has the transformer's call signature, so `denoising_loop` takes it as is.
`on_window(start)` is called before each window runs (the step cache keeps one history per window).
`window_text` (a prompt schedule, prompt_schedule.py) gives each window its own text batch in
place of the loop's.
"""

from typing import Callable, List, Optional, Sequence

import torch


def window_starts(frames: int, window: int, overlap: int) -> List[int]:
    if window >= frames:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"window overlap {overlap} must be within 0..{window - 1} latent frames.")
    stride = window - overlap
    starts = list(range(0, frames - window + 1, stride))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return starts


def window_count(frames: int, window: int, overlap: int) -> int:
    """How many windows a video of `frames` latent frames gets (overlap 0 = half a window)."""
    return len(window_starts(frames, window, overlap or window // 2))


def blend_weights(start: int, window: int, frames: int, overlap: int) -> torch.Tensor:
    """1 inside, a linear ramp over `overlap` frames on each edge that touches another window."""
    weights = torch.ones(window)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
    if start > 0 and overlap:
        weights[:overlap] = ramp
    if start + window < frames and overlap:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


class SlidingWindowTransformer(torch.nn.Module):
    def __init__(self, transformer, window: int = 0, overlap: int = 0,
                 on_window: Optional[Callable[[int], None]] = None,
                 window_text: Optional[Sequence[torch.Tensor]] = None):
        super().__init__()
        self.transformer, self.on_window, self.window_text = transformer, on_window, window_text
        self.config = transformer.config
        self.window = window or transformer.config.latent_frames
        self.overlap = overlap if overlap else self.window // 2
        if self.window > transformer.config.latent_frames:
            raise ValueError(f"window {self.window} exceeds the model's {transformer.config.latent_frames} latent frames.")

    def rotary(self, frames: int, height: int, width: int, device=None):
        return self.transformer.rotary(min(frames, self.window), height, width, device)

    def forward(self, hidden_states, encoder_hidden_states, timestep, fps, inpaint_latents=None,
                image_rotary_emb=None, **kwargs):
        frames = hidden_states.shape[1]
        starts = window_starts(frames, self.window, self.overlap)
        texts = self.window_text or [encoder_hidden_states] * len(starts)
        if starts == [0] and frames <= self.window:
            return self.transformer(hidden_states, texts[0], timestep, fps, inpaint_latents,
                                    image_rotary_emb=image_rotary_emb, **kwargs)
        total = None
        weight_sum = torch.zeros(frames, device=hidden_states.device)
        for start, text in zip(starts, texts):
            part = slice(start, start + self.window)
            inpaint = inpaint_latents[:, part] if inpaint_latents is not None else None
            if self.on_window is not None:
                self.on_window(start)
            prediction = self.transformer(hidden_states[:, part], text, timestep, fps, inpaint,
                                          image_rotary_emb=image_rotary_emb, **kwargs)
            weights = blend_weights(start, self.window, frames, self.overlap).to(prediction.device)
            if total is None:
                total = prediction.new_zeros(prediction.shape[0], frames, *prediction.shape[2:])
            total[:, part] += prediction * weights.to(prediction.dtype)[None, :, None, None, None]
            weight_sum[part] += weights
        return total / weight_sum.to(total.dtype)[None, :, None, None, None]
