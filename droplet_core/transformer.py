"""DropletVideo's and Droplet3D's DiT: diffusers' CogVideoX pieces plus, for DropletVideo, the FPS embedding.

Submodule names are the checkpoint keys (patch_embed, time_embedding, fps_embedding,
transformer_blocks.N.attn1.to_q, norm_final, norm_out, proj_out), so weights load strictly.
What is DropletVideo's own: `fps_proj`/`fps_embedding` and the positional-table handling
(positional.py). Droplet3D (config.model_kind "droplet3d") is the same model without the FPS
embedding: its reference calls the time embedding with timestep_cond=None and reads the same
positional table. Layout: hidden states are [B, F, C, H, W] (latent frames first).
"""

from typing import Callable, Optional

import torch
from diffusers.models.embeddings import CogVideoXPatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from .configs import TransformerConfig
from .diffusers_internals import ContextParallelInput, ContextParallelOutput
from .positional import positional_rows, rotary_embeddings, sincos_table_3d

# A block runner takes (block index, block, hidden, encoder_hidden, temb, rotary, attention_options=None)
# and returns (hidden, encoder_hidden); offload and caching plug in here without touching the model.
# attention_options go, untouched, to the block's attention function (attention.py).
BlockRunner = Callable[..., tuple]


def run_block(index, block, hidden, encoder_hidden, temb, rotary, attention_options=None):
    extra = {} if attention_options is None else {"attention_kwargs": {"attention_options": attention_options}}
    return block(hidden_states=hidden, encoder_hidden_states=encoder_hidden, temb=temb, image_rotary_emb=rotary,
                 **extra)


class DropletVideoTransformer3DModel(nn.Module):
    # Sequence parallel (parallel/sequence.py, diffusers' context-parallel hooks): the video tokens
    # are split at the first block, each block takes the same rows of the RoPE table, the video
    # tokens are gathered after proj_out; the text tokens stay whole (parallel/joint_attention.py).
    _cp_plan = {
        "transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
        "transformer_blocks.*": {"image_rotary_emb": [ContextParallelInput(split_dim=0, expected_dims=2)] * 2},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim

        # 1. Patch embedding (positions are added here, not inside diffusers' patch embed).
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=config.patch_size, in_channels=config.in_channels, embed_dim=dim,
            text_embed_dim=config.text_embed_dim, bias=True, use_positional_embeddings=False,
            use_learned_positional_embeddings=False)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.register_buffer("pos_table", torch.empty(0), persistent=False)

        # 2. Time and FPS embeddings: emb = MLP(sin(t)) + MLP(sin(fps)); Droplet3D: emb = MLP(sin(t)).
        self.time_proj = Timesteps(dim, config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim, config.timestep_activation_fn)
        if config.kind.has_fps:
            self.fps_proj = Timesteps(dim, config.flip_sin_to_cos, config.freq_shift)
            self.fps_embedding = TimestepEmbedding(dim, config.time_embed_dim, config.timestep_activation_fn)

        # 3. Blocks.
        self.transformer_blocks = nn.ModuleList([
            CogVideoXBlock(dim=dim, num_attention_heads=config.num_attention_heads,
                           attention_head_dim=config.attention_head_dim, time_embed_dim=config.time_embed_dim,
                           dropout=config.dropout, activation_fn=config.activation_fn,
                           attention_bias=config.attention_bias,
                           norm_elementwise_affine=config.norm_elementwise_affine, norm_eps=config.norm_eps)
            for _ in range(config.num_layers)])
        self.norm_final = nn.LayerNorm(dim, config.norm_eps, config.norm_elementwise_affine)

        # 4. Output.
        self.norm_out = AdaLayerNorm(embedding_dim=config.time_embed_dim, output_dim=2 * dim,
                                     norm_elementwise_affine=config.norm_elementwise_affine,
                                     norm_eps=config.norm_eps, chunk_dim=1)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * (config.out_channels or config.in_channels))

    def init_buffers(self, device=None, dtype=None):
        """(Re)builds the non-persistent sin-cos table; call after loading onto the meta device."""
        table = sincos_table_3d(self.config) if not self.config.use_rotary_positional_embeddings else torch.empty(0)
        self.pos_table = table.to(device=device, dtype=dtype)

    def rotary(self, frames: int, height: int, width: int, device=None):
        """RoPE for a latent grid, or None on the sin-cos path."""
        if not self.config.use_rotary_positional_embeddings:
            return None
        p = self.config.patch_size
        return rotary_embeddings(self.config, frames, height // p, width // p, device)

    @property
    def has_fps(self) -> bool:
        return self.config.kind.has_fps

    def embed_conditioning(self, timestep: torch.Tensor, fps: Optional[torch.Tensor],
                           dtype: torch.dtype) -> torch.Tensor:
        """The conditioning vector; `fps` is read by DropletVideo only (Droplet3D has no FPS input, so
        callers may pass None or any value: whether to warn about one is theirs to decide)."""
        t_emb = self.time_proj(timestep).to(dtype=dtype)
        if not self.has_fps:
            return self.time_embedding(t_emb, condition=None)
        if fps is None:
            raise ValueError("this DropletVideo transformer needs the FPS condition (fps); none was given.")
        fps_emb = self.fps_proj(fps).to(dtype=dtype)
        return self.time_embedding(t_emb, condition=None) + self.fps_embedding(fps_emb, condition=None)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.predict(*args, **kwargs)

    def predict(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor, fps: Optional[torch.Tensor], inpaint_latents: Optional[torch.Tensor] = None,
                image_rotary_emb=None, block_runner: BlockRunner = run_block,
                attention_options=None) -> torch.Tensor:
        """The engine's call (also `forward`; ComfyUI's native model overrides forward and calls this).
        `attention_options` reach every block's attention function (ComfyUI: the call's transformer_options)."""
        batch, frames, channels, height, width = hidden_states.shape
        p = self.config.patch_size

        # 1. Conditioning vector (timestep, + FPS for DropletVideo).
        emb = self.embed_conditioning(timestep, fps, hidden_states.dtype)

        # 2. Patch embedding of [noise ; mask ; masked-video latents].
        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents], dim=2)
        hidden_states = self.patch_embed(encoder_hidden_states, hidden_states)

        # 3. Positions (sin-cos path only; the rotary path passes image_rotary_emb to the blocks).
        text_len = encoder_hidden_states.shape[1]
        if not self.config.use_rotary_positional_embeddings:
            # Sliced from the table each call: a cached copy would outlive the module's moves between devices.
            # The table may sit on the offload device when ComfyUI loads the model partially.
            table = self.pos_table.to(hidden_states.device)
            hidden_states = hidden_states + positional_rows(table, self.config, text_len, frames, height // p, width // p)
            hidden_states = self.embedding_dropout(hidden_states)
        encoder_hidden_states, hidden_states = hidden_states[:, :text_len], hidden_states[:, text_len:]

        # 4. Blocks.
        for index, block in enumerate(self.transformer_blocks):
            hidden_states, encoder_hidden_states = block_runner(
                index, block, hidden_states, encoder_hidden_states, emb, image_rotary_emb, attention_options)

        # 5. Final norm (over text + video on the rotary path, as the reference does).
        if not self.config.use_rotary_positional_embeddings:
            hidden_states = self.norm_final(hidden_states)
        else:
            hidden_states = self.norm_final(torch.cat([encoder_hidden_states, hidden_states], dim=1))[:, text_len:]
        hidden_states = self.proj_out(self.norm_out(hidden_states, temb=emb))

        # 6. Unpatchify to [B, F, C_out, H, W].
        out = hidden_states.reshape(batch, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
