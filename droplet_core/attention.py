"""Attention kernels for the transformer blocks, and fused QKV projections.

`DropletAttnProcessor` is diffusers' CogVideoXAttnProcessor2_0 (text and video tokens attend
jointly; RoPE on the video part of q and k) with a choice of kernel: "sdpa" (torch's
scaled_dot_product_attention, what diffusers uses) or "sage" (SageAttention, CUDA fp16/bf16,
imported at run time), or an attention function of the caller's (ComfyUI's native model passes
one that calls ComfyUI's attention with each call's options). With fused projections one Linear `to_qkv` replaces to_q/to_k/to_v
(one matmul instead of three); its parameter names differ, so merge LoRAs before fusing.
"""

import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from .fp8 import Fp8Linear, dense_weight

ATTENTION_BACKENDS = ("sdpa", "sage")

# An attention function: (q, k, v in [B, heads, tokens, head_dim], options) -> [B, tokens, heads * head_dim].
# `options` is what the transformer's caller passed as attention_options (None from the engine).
AttentionFn = Callable[..., torch.Tensor]


def attention_kernel(backend: str):
    """(q, k, v) in [B, heads, tokens, head_dim] -> same layout."""
    if backend == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
    if backend == "sage":
        try:
            sageattention = importlib.import_module("sageattention")
        except ImportError as error:
            raise ValueError(f"attention 'sage' needs SageAttention ({error}): `pip install sageattention` "
                             f"(CUDA only), or use attention 'sdpa'.") from error
        return lambda q, k, v: sageattention.sageattn(q, k, v, tensor_layout="HND", is_causal=False)
    raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(ATTENTION_BACKENDS)}.")


def kernel_attention(backend: str) -> AttentionFn:
    """The engine's attention function: `backend`'s kernel; it takes no options."""
    attend = attention_kernel(backend)
    return lambda query, key, value, options=None: attend(query, key, value).transpose(1, 2).flatten(2)


class DropletAttnProcessor:
    def __init__(self, backend: str = "sdpa", attention_fn: Optional[AttentionFn] = None):
        """`attention_fn` replaces `backend`'s kernel (the sequence-parallel processor reads `backend`)."""
        self.backend = backend
        self.attention_fn = attention_fn or kernel_attention(backend)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None,
                 attention_options=None):
        if attention_mask is not None:
            raise ValueError("DropletVideo's joint attention takes no attention mask.")
        text_len = encoder_hidden_states.size(1)
        tokens = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        if hasattr(attn, "to_qkv"):
            query, key, value = attn.to_qkv(tokens).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        query, key, value = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], image_rotary_emb)
        out = self.joint_attention(query, key, value, text_len, attention_options)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_hidden_states, hidden_states = out.split([text_len, out.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states

    def joint_attention(self, query, key, value, text_len: int, options=None) -> torch.Tensor:
        """[B, heads, text + video tokens, head_dim] -> [B, tokens, heads * head_dim]; the sequence-parallel
        processor (parallel/joint_attention.py) overrides this."""
        return self.attention_fn(query, key, value, options)


def set_attention(transformer, backend: str = "sdpa", attention_fn: Optional[AttentionFn] = None) -> None:
    """Every block's attention runs through DropletAttnProcessor with `backend` (or `attention_fn`)."""
    processor = DropletAttnProcessor(backend, attention_fn)
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(processor)


@torch.no_grad()
def fuse_qkv(transformer, dtype: torch.dtype) -> None:
    """One to_qkv Linear per block in place of to_q/to_k/to_v (fp8 stays fp8, requantized)."""
    for block in transformer.transformer_blocks:
        attn = block.attn1
        if hasattr(attn, "to_qkv"):
            continue
        parts = (attn.to_q, attn.to_k, attn.to_v)
        weight = torch.cat([dense_weight(p, dtype) for p in parts])
        bias = torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None
        bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        if any(isinstance(p, Fp8Linear) for p in parts):
            fused = Fp8Linear.from_dense(weight, bias)
        else:
            fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            fused.weight, fused.bias = nn.Parameter(weight, requires_grad=False), bias
        del attn.to_q, attn.to_k, attn.to_v
        attn.to_qkv = fused
        attn.fused_projections = True
    processor = transformer.transformer_blocks[0].attn1.processor
    set_attention(transformer, getattr(processor, "backend", "sdpa"), getattr(processor, "attention_fn", None))
