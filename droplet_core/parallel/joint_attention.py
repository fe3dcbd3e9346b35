"""Joint text + video attention with the video tokens split across a Ulysses group.

CogVideoX attends over [text ; video] jointly. The video tokens (~22k) are split across the
ranks; the text tokens (226 or 400) stay replicated on every rank, since duplicating their
projections and feed-forward costs little. For the exchange each rank hands diffusers' Ulysses
attention 1/N of the text tokens plus its video shard, so the all-to-all sees every token exactly
once (in a rank-major order: attention does not depend on key order); afterwards the text
outputs are all-gathered so every rank holds the whole text stream again. RoPE was already
applied to the local video tokens with the local rows of the table (the _cp_plan splits it).
"""

import torch
import torch.nn.functional as F
from diffusers.hooks.context_parallel import EquipartitionSharder
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..attention import DropletAttnProcessor

# Our kernel names -> diffusers' attention backends with context-parallel support.
DIFFUSERS_BACKENDS = {"sdpa": "native", "sage": "sage"}


class UlyssesJointAttnProcessor(DropletAttnProcessor):
    def __init__(self, backend: str, parallel_config):
        super().__init__(backend)
        self._parallel_config = parallel_config  # diffusers' ParallelConfig, set up on the mesh

    def joint_attention(self, query, key, value, text_len: int, options=None) -> torch.Tensor:
        """`options` is unused: the engine's workers call with none."""
        cp = self._parallel_config.context_parallel_config
        rank, degree = cp._ulysses_local_rank, cp.ulysses_degree
        text_share = text_len // degree + (rank < text_len % degree)  # the size tensor_split gives this rank

        def share(x):  # [B, H, T + S_local, D] -> [B, T_rank + S_local, H, D]
            text = x[:, :, :text_len].tensor_split(degree, dim=2)[rank]
            return torch.cat([text, x[:, :, text_len:]], dim=2).transpose(1, 2)

        out = dispatch_attention_fn(share(query), share(key), share(value), backend=DIFFUSERS_BACKENDS[self.backend],
                                    parallel_config=self._parallel_config).flatten(2)
        return torch.cat([gather_text(out[:, :text_share], text_len, degree, cp._ulysses_mesh), out[:, text_share:]], 1)


def gather_text(share: torch.Tensor, text_len: int, degree: int, mesh) -> torch.Tensor:
    """The ranks' text shares (tensor_split sizes) -> all text tokens on every rank. The shares are
    padded to one size first: gloo's all_gather takes equal shapes only."""
    longest = -(-text_len // degree)
    gathered = EquipartitionSharder.unshard(F.pad(share, (0, 0, 0, longest - share.shape[1])), 1, mesh)
    sizes = [len(part) for part in torch.arange(text_len).tensor_split(degree)]
    return torch.cat([part[:, :size] for part, size in zip(gathered.split(longest, dim=1), sizes)], dim=1)
