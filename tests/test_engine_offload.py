"""Offload modes, the planner, fp8 weights, attention kernels, fused QKV and compile wiring.

Every mode must give exactly the plain path's output in fp32 on CPU: the copies are real
copies there too (parked_tensors.py), so a weight left on the wrong side or a block run
before its copy arrives changes the numbers or trips the checks below.
"""

import sys
import types

import pytest
import torch
from PIL import Image

from droplet_core.block_swap import BlockSwap
from droplet_core.configs import RELEASE_TRANSFORMER, VaeConfig
from droplet_core.engine_options import EngineOptions
from droplet_core.loading import load_transformer
from droplet_core.offload_plan import Workload, component_bytes, plan_offload
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.sequential_offload import attach_sequential_offload
from droplet_core.transformer import DropletVideoTransformer3DModel, run_block
from engine_fixtures import GOLDENS, tiny_ckpt  # noqa: F401

SMALL = dict(prompt="a panda", fps=8, width=128, height=128, frames=5, steps=2, seed=7)


def fresh_transformer(ckpt):
    return load_transformer(ckpt / "transformer")


def transformer_inputs(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 2, 16, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(2, 7, config.text_embed_dim, generator=g),
                timestep=torch.tensor([500, 500]), fps=torch.tensor([8]),
                inpaint_latents=torch.randn(2, 2, 17, 8, 8, generator=g))


@pytest.fixture(scope="module")
def plain_output(tiny_ckpt):
    model = fresh_transformer(tiny_ckpt)
    return model(**transformer_inputs(model.config))


@pytest.fixture(scope="module")
def plain_frames(tiny_ckpt):
    return load_pipeline(tiny_ckpt).generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL)).frames


def stored_pointer(parked, module):
    """The parked (offload) tensor of `module.weight`."""
    slot = next(i for i, (owner, name, _) in enumerate(parked.slots) if owner is module and name == "weight")
    return parked.stored[slot].data_ptr()


# --- block swap ---------------------------------------------------------------------------

@pytest.mark.parametrize("blocks_on_device", [0, 1])
def test_block_swap_equals_plain_and_streams_the_swapped_blocks(tiny_ckpt, plain_output, blocks_on_device):
    model = fresh_transformer(tiny_ckpt)
    swap = BlockSwap(model, "cpu", blocks_on_device)
    seen = []

    def spy(index, block, *args):
        if index in swap.parked:  # the block must run on a fresh device copy, not its parked weights
            seen.append(block.attn1.to_q.weight.data_ptr() != stored_pointer(swap.parked[index], block.attn1.to_q))
        return run_block(index, block, *args)

    with swap.on_device():
        for _ in range(2):  # the second step reuses the prefetch made at the end of the first
            out = model(**transformer_inputs(model.config), block_runner=swap.wrap(spy))
            assert torch.equal(out, plain_output)
    swapped = len(model.transformer_blocks) - blocks_on_device
    assert seen == [True] * 2 * swapped
    # With no resident block the last block prefetches block 0 for the next step (one spare at the end).
    assert swap.fetches == 2 * swapped + (blocks_on_device == 0) and not swap.pending
    for index, parked in swap.parked.items():  # back in offload memory after use
        block = model.transformer_blocks[index]
        assert block.attn1.to_q.weight.data_ptr() == stored_pointer(parked, block.attn1.to_q)


@pytest.mark.parametrize("blocks_on_device", [-1, 3, 1.5])
def test_block_swap_refuses_a_count_out_of_range(tiny_ckpt, blocks_on_device):
    with pytest.raises(ValueError, match=r"blocks_on_device .* out of range: this transformer has 2 blocks, use 0 .. 2"):
        BlockSwap(fresh_transformer(tiny_ckpt), "cpu", blocks_on_device)


@pytest.mark.parametrize("options", [EngineOptions(offload="model"), EngineOptions(offload="sequential"),
                                     EngineOptions(offload="block_swap", blocks_on_device=0),
                                     EngineOptions(offload="block_swap", blocks_on_device=1)], ids=str)
def test_offload_modes_give_exactly_the_plain_video(tiny_ckpt, plain_frames, options):
    pipe = load_pipeline(tiny_ckpt, options=options)
    assert torch.equal(pipe.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL)).frames, plain_frames)


def test_block_swap_composes_with_the_step_cache(tiny_ckpt):
    request = Request(image=Image.open(GOLDENS / "start.png"), cache_threshold=0.5, **{**SMALL, "steps": 4})
    plain = load_pipeline(tiny_ckpt).generate(request).frames
    swapped = load_pipeline(tiny_ckpt, options=EngineOptions(offload="block_swap", blocks_on_device=0))
    assert torch.equal(swapped.generate(request).frames, plain)


# --- sequential offload --------------------------------------------------------------------

def test_sequential_offload_equals_plain_and_moves_each_layer_for_its_forward(tiny_ckpt, plain_output):
    model = fresh_transformer(tiny_ckpt)
    attach_sequential_offload(model, "cpu")
    to_q = model.transformer_blocks[1].attn1.to_q
    parked_pointer = to_q.weight.data_ptr()
    during = []
    to_q.register_forward_pre_hook(lambda m, a: during.append(m.weight.data_ptr() != parked_pointer))
    assert torch.equal(model(**transformer_inputs(model.config)), plain_output)
    assert during == [True]
    assert to_q.weight.data_ptr() == parked_pointer


# --- options -------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (dict(offload="fast"), "unknown offload mode 'fast': use one of none, model, block_swap, sequential, auto"),
    (dict(weights="int4"), "unknown weights format 'int4': use one of default, fp8_e4m3fn"),
    (dict(attention="flash"), "unknown attention backend 'flash': use one of sdpa, sage"),
    (dict(offload="model", blocks_on_device=3), "blocks_on_device is for offload 'block_swap'"),
    (dict(offload="sequential", compile=True), "use offload 'block_swap' with compile, or drop compile"),
])
def test_bad_options_name_the_fix(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EngineOptions(**options).check()


def test_block_swap_out_of_range_through_the_pipeline(tiny_ckpt):
    with pytest.raises(ValueError, match="use 0 .. 2"):
        load_pipeline(tiny_ckpt, options=EngineOptions(offload="block_swap", blocks_on_device=5))


# --- planner -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def release_bytes():
    """The release's weight bytes in bf16, counted on the meta device (no memory used)."""
    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5Config, T5EncoderModel

    t5_xxl = T5Config(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False)
    with torch.device("meta"):
        transformer = DropletVideoTransformer3DModel(RELEASE_TRANSFORMER).to(torch.bfloat16)
        text = T5EncoderModel(t5_xxl).to(torch.bfloat16)
        vae = AutoencoderKLCogVideoX(**VaeConfig().diffusers_kwargs()).half()
    return component_bytes(transformer, text, vae)


def test_release_weight_bytes_are_the_5b_model(release_bytes):
    assert 11.0e9 < release_bytes.transformer < 11.3e9  # ~5.6B parameters in bf16
    assert 9.4e9 < release_bytes.text_encoder < 9.6e9  # T5-XXL encoder
    assert release_bytes.num_blocks == 42


@pytest.mark.parametrize("free_gib, mode, blocks", [
    (80, "none", 42), (40, "none", 42), (24, "model", 42), (16, "block_swap", 39), (12, "block_swap", 23),
    (8, "sequential", 0)])
def test_planner_for_the_release_at_672x384x85(release_bytes, free_gib, mode, blocks):
    plan = plan_offload(free_gib * 2**30, release_bytes, RELEASE_TRANSFORMER, Workload(672, 384, 85))
    assert (plan.mode, plan.blocks_on_device) == (mode, blocks), plan.reason
    if mode != "sequential":
        assert plan.needed_bytes <= free_gib * 2**30


def test_planner_needs_less_for_smaller_videos_and_fp8(release_bytes):
    small = plan_offload(12 * 2**30, release_bytes, RELEASE_TRANSFORMER, Workload(480, 272, 49))
    assert small.mode == "block_swap" and small.blocks_on_device > 23
    fp8 = release_bytes.__class__(**{**release_bytes.__dict__, "block": release_bytes.block // 2 + 1})
    assert plan_offload(12 * 2**30, fp8, RELEASE_TRANSFORMER, Workload()).mode == "model"


def test_auto_on_cpu_keeps_everything_in_place(tiny_ckpt):
    assert load_pipeline(tiny_ckpt, options=EngineOptions(offload="auto")).offload == "none"
