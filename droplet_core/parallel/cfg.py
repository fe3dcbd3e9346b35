"""CFG parallel: the [negative, positive] halves of the CFG batch on different ranks.

The wrapper has the transformer's call signature, so `sampling.denoising_loop` takes it as is: each
rank runs its half of the batch and the halves are all-gathered (in rank order, so
[negative, positive] again) before the sampler's CFG arithmetic, which every rank then does alike.
"""

import torch
from diffusers.hooks.context_parallel import EquipartitionSharder
from torch import nn


class CfgParallelTransformer(nn.Module):
    def __init__(self, transformer, cfg_mesh):
        super().__init__()
        self.transformer, self.mesh = transformer, cfg_mesh
        self.config = transformer.config

    def rotary(self, frames: int, height: int, width: int, device=None):
        return self.transformer.rotary(frames, height, width, device)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                fps: torch.Tensor, inpaint_latents=None, **kwargs) -> torch.Tensor:
        if hidden_states.shape[0] != self.mesh.size():
            raise ValueError(f"CFG parallel needs the CFG batch of {self.mesh.size()} ([negative, positive]), got a "
                             f"batch of {hidden_states.shape[0]}: use guidance_scale > 1, or --parallel sequence.")

        def half(x):
            return None if x is None else EquipartitionSharder.shard(x, 0, self.mesh)

        # fps is one value broadcast over the batch (quirk 5): every rank takes it whole.
        out = self.transformer(half(hidden_states), half(encoder_hidden_states), half(timestep), fps,
                               inpaint_latents=half(inpaint_latents), **kwargs)
        return EquipartitionSharder.unshard(out, 0, self.mesh)
