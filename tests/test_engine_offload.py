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

from droplet_core.offload.block_swap import BlockSwap
from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, VaeConfig
from droplet_core.engine_options import EngineOptions
from droplet_core.loading import load_transformer
from droplet_core.offload.plan import (Workload, component_bytes, plan_offload, transformer_activation_bytes,
                                       vae_decode_bytes, vae_encode_bytes)
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.offload.sequential import attach_sequential_offload
from droplet_core.step_cache import StepCache
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


def test_block_swap_streams_no_skipped_block_on_a_step_the_cache_skips(tiny_ckpt, plain_output):
    model = fresh_transformer(tiny_ckpt)
    swap, cache = BlockSwap(model, "cpu", 0), StepCache(0.1, model.config.num_layers)
    with swap.on_device():  # the same input three times: the cache computes once, then skips
        outputs = [model(**transformer_inputs(model.config), block_runner=swap.wrap(cache)) for _ in range(3)]
    assert (cache.computed_steps, cache.skipped_steps) == (1, 2)
    for output in outputs:
        torch.testing.assert_close(output, plain_output, atol=1e-5, rtol=0)
    # Computed step: blocks 0 and 1, then block 0 for the next step (3). Each skipped step only
    # needs block 0 (its norm1 decides the skip): 0 for the next step, plus block 1 once in flight.
    assert swap.fetches == 3 + 2 + 1


@pytest.mark.parametrize("blocks_on_device", [-1, 3, 1.5])
def test_block_swap_refuses_a_count_out_of_range(tiny_ckpt, blocks_on_device):
    with pytest.raises(ValueError, match=r"blocks_on_device .* out of range: this transformer has 2 blocks, "
                                         r"use 0 \.\. 2"):
        BlockSwap(fresh_transformer(tiny_ckpt), "cpu", blocks_on_device)


@pytest.mark.parametrize("options", [EngineOptions(offload="model"), EngineOptions(offload="sequential"),
                                     EngineOptions(offload="block_swap", blocks_on_device=0),
                                     EngineOptions(offload="block_swap", blocks_on_device=1)], ids=str)
def test_offload_modes_give_exactly_the_plain_video(tiny_ckpt, plain_frames, options):
    pipe = load_pipeline(tiny_ckpt, options=options)
    assert torch.equal(pipe.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL)).frames, plain_frames)


def test_model_offload_has_only_the_running_component_on_the_device(tiny_ckpt, plain_frames, monkeypatch):
    """On the CPU a move changes nothing, so the moves are recorded: the run device is 'cpu:0' (the
    CPU under another name) and each component's last .to() says where it is when each one runs."""
    pipe = load_pipeline(tiny_ckpt, device="cpu:0", options=EngineOptions(offload="model"))
    components = {"transformer": pipe.transformer, "t5": pipe.text_encoder.model, "vae": pipe.vae}
    where = dict.fromkeys(components, "cpu")

    def recording_to(name, module):
        original = module.to

        def to(*args, **kwargs):
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None:
                where[name] = "device" if device == torch.device("cpu:0") else str(device)
            return original(*args, **kwargs)
        return to

    for name, module in components.items():
        monkeypatch.setattr(module, "to", recording_to(name, module))
    seen = []
    for name, module in (("t5", pipe.text_encoder.model), ("vae encode", pipe.vae.encoder),
                         ("vae decode", pipe.vae.decoder)):
        module.register_forward_pre_hook(lambda m, a, name=name: seen.append((name, dict(where))))
    frames = pipe.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL),
                           on_step=lambda i, n, x: seen.append(("step", dict(where)))).frames
    assert torch.equal(frames, plain_frames)
    runs = {"t5": "t5", "vae encode": "vae", "step": "transformer", "vae decode": "vae"}
    assert {name for name, _ in seen} == set(runs)
    for name, places in seen:
        assert places == {c: "device" if c == runs[name] else "cpu" for c in components}, (name, places)
    assert where == dict.fromkeys(components, "cpu")  # all back at the end


@pytest.mark.parametrize("offload", ["none", "model", "block_swap", "sequential"])
def test_t5_on_the_cpu_never_moves_and_gives_the_same_video(tiny_ckpt, plain_frames, offload, monkeypatch):
    from transformers import T5EncoderModel

    moved = []
    original = T5EncoderModel.to
    monkeypatch.setattr(T5EncoderModel, "to", lambda self, *args, **kwargs: (moved.append(args),
                                                                             original(self, *args, **kwargs))[1])
    pipe = load_pipeline(tiny_ckpt, options=EngineOptions(offload=offload, text_encoder_on_cpu=True))
    frames = pipe.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL)).frames
    assert torch.equal(frames, plain_frames)
    assert moved == [] and not any(m._forward_pre_hooks for m in pipe.text_encoder.model.modules())
    without = load_pipeline(tiny_ckpt, options=EngineOptions(offload=offload))  # the spy sees T5 move otherwise
    without.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL))
    assert moved or any(m._forward_pre_hooks for m in without.text_encoder.model.modules())


def test_t5_fp8_stores_all_but_wo_in_fp8_and_changes_the_video_only_slightly(tiny_ckpt, plain_frames):
    pipe = load_pipeline(tiny_ckpt, options=EngineOptions(text_encoder_fp8=True, text_encoder_on_cpu=True))
    linears = {name.rpartition(".")[2]: module.weight.dtype for name, module in pipe.text_encoder.model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    assert linears == {"q": torch.float8_e4m3fn, "k": torch.float8_e4m3fn, "v": torch.float8_e4m3fn,
                       "o": torch.float8_e4m3fn, "wi_0": torch.float8_e4m3fn, "wi_1": torch.float8_e4m3fn,
                       "wo": torch.float32}
    frames = pipe.generate(Request(image=Image.open(GOLDENS / "start.png"), **SMALL)).frames
    assert 0 < (frames - plain_frames).abs().mean() < 0.01


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

    from bench.vram_trace import T5_XXL

    t5_xxl = T5Config(**T5_XXL)
    with torch.device("meta"):
        transformer = DropletVideoTransformer3DModel(COGVIDEOX_5B_CLASS_TRANSFORMER).to(torch.bfloat16)
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
    plan = plan_offload(free_gib * 2**30, release_bytes, COGVIDEOX_5B_CLASS_TRANSFORMER, Workload(672, 384, 85))
    assert (plan.mode, plan.blocks_on_device) == (mode, blocks), plan.reason
    if mode != "sequential":
        assert plan.needed_bytes <= free_gib * 2**30


def test_planner_needs_less_for_smaller_videos_and_fp8(release_bytes):
    small = plan_offload(12 * 2**30, release_bytes, COGVIDEOX_5B_CLASS_TRANSFORMER, Workload(480, 272, 49))
    assert small.mode == "block_swap" and small.blocks_on_device > 23
    fp8 = release_bytes.__class__(**{**release_bytes.__dict__, "block": release_bytes.block // 2 + 1})
    assert plan_offload(12 * 2**30, fp8, COGVIDEOX_5B_CLASS_TRANSFORMER, Workload()).mode == "model"


@pytest.mark.parametrize("size", [(672, 384, 85), (480, 272, 49)], ids=str)
def test_planner_estimates_cover_the_traced_memory_of_the_release(size):
    """The planner's (and the nodes') activation and VAE estimates against bench/vram_trace.py's fake-tensor trace
    of the real 5B transformer and VAE: at least 10% above (real peaks exceed traced ones by
    13-20% on the CPU; the 1.5 GiB margin covers the rest), at most 60% above."""
    from bench.vram_trace import trace_transformer, trace_vae

    transformer, vae = trace_transformer(*size), trace_vae(*size)
    pairs = [(transformer_activation_bytes(COGVIDEOX_5B_CLASS_TRANSFORMER, Workload(*size)), transformer["activations"]),
             (vae_decode_bytes(Workload(*size)), vae["decode"]),
             (vae_decode_bytes(Workload(*size, tiled_vae=True)), vae["decode_tiled"]),
             (vae_encode_bytes(Workload(*size)), vae["encode"]),
             (vae_encode_bytes(Workload(*size, tiled_vae=True)), vae["encode_tiled"])]
    for estimate, traced in pairs:
        assert 1.1 * traced <= estimate <= 1.6 * traced, (estimate / 2**30, traced / 2**30)


def test_auto_on_cpu_keeps_everything_in_place(tiny_ckpt):
    assert load_pipeline(tiny_ckpt, options=EngineOptions(offload="auto")).offload == "none"


# --- fp8 weights ---------------------------------------------------------------------------

# Relative L2 error of the tiny transformer's output, fp8 vs fp32 weights: measured 0.0019 (bf16 weights
# give 0.0063 on the same inputs), so fp8 storage costs less than bf16 rounding here.
FP8_TOLERANCE = 0.01


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def fp8_transformer(ckpt):
    from droplet_core.fp8 import quantize_blocks

    model = fresh_transformer(ckpt)
    assert quantize_blocks(model) > 0
    return model


def test_fp8_storage_keeps_names_and_stays_close_to_fp32(tiny_ckpt, plain_output):
    model = fp8_transformer(tiny_ckpt)
    state = model.state_dict()
    assert list(state) == list(fresh_transformer(tiny_ckpt).state_dict())
    assert state["transformer_blocks.0.attn1.to_q.weight"].dtype == torch.float8_e4m3fn
    assert state["transformer_blocks.0.ff.net.2.weight"].dtype == torch.float8_e4m3fn
    for kept in ("transformer_blocks.0.attn1.norm_q.weight", "transformer_blocks.0.norm1.norm.weight",
                 "patch_embed.proj.weight", "time_embedding.linear_1.weight", "proj_out.weight"):
        assert state[kept].dtype == torch.float32, kept
    error = relative_error(model(**transformer_inputs(model.config)), plain_output)
    assert 0 < error < FP8_TOLERANCE


def test_saved_fp8_file_loads_as_the_in_memory_conversion(tiny_ckpt, tmp_path):
    from droplet_core.fp8 import Fp8Linear, save_fp8_transformer
    from droplet_core.weights import tensor_shapes

    model = fp8_transformer(tiny_ckpt)
    path = tmp_path / "droplet_fp8_e4m3fn.safetensors"
    save_fp8_transformer(model, path)
    assert "scaled_fp8" in tensor_shapes(path) and "transformer_blocks.1.attn1.to_k.scale_weight" in tensor_shapes(path)
    expected = model(**transformer_inputs(model.config))
    kept = load_transformer(path, keep_fp8=True)
    assert isinstance(kept.transformer_blocks[1].attn1.to_k, Fp8Linear)
    assert torch.equal(kept(**transformer_inputs(kept.config)), expected)
    upcast = load_transformer(path)  # without keep_fp8 the file is dequantized once, to the same values
    assert upcast.transformer_blocks[1].attn1.to_k.weight.dtype == torch.float32
    assert torch.equal(upcast(**transformer_inputs(upcast.config)), expected)


def test_unscaled_fp8_file_and_unsupported_formats(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    from droplet_core.fp8 import Fp8Linear

    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_ckpt / "transformer" / "config.json").read_text())
    state = fresh_transformer(tiny_ckpt).state_dict()
    state = {k: v.to(torch.float8_e4m3fn) if k.startswith("transformer_blocks.") and v.ndim == 2 else v
             for k, v in state.items()}  # what ComfyUI's plain fp8_e4m3fn export holds
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(folder / "model_fp8_e4m3fn.safetensors"))
    model = load_transformer(folder, keep_fp8=True)
    assert isinstance(model.transformer_blocks[0].ff.net[2], Fp8Linear)
    assert torch.isfinite(model(**transformer_inputs(model.config))).all()
    state["transformer_blocks.0.ff.net.2.weight_scale"] = torch.ones(())
    save_file(state, str(folder / "model_fp8_e4m3fn.safetensors"))
    with pytest.raises(ValueError, match="mixed-precision quantization format.*use a plain or scaled fp8_e4m3fn"):
        load_transformer(folder, keep_fp8=True)


def test_lora_merges_into_an_fp8_file_as_into_full_precision(tiny_ckpt, tmp_path):
    from droplet_core.fp8 import quantize_blocks, save_fp8_transformer
    from droplet_core.lora import merge_loras
    from lora_files import random_factors, write_peft

    lora = tmp_path / "lora.safetensors"
    write_peft(lora, random_factors(fresh_transformer(tiny_ckpt), seed=3))
    save_fp8_transformer(fp8_transformer(tiny_ckpt), tmp_path / "fp8.safetensors")
    fp8 = load_transformer(tmp_path / "fp8.safetensors", keep_fp8=True)
    before = fp8(**transformer_inputs(fp8.config))
    merge_loras(fp8, [(lora, 1.0)])
    full = fresh_transformer(tiny_ckpt)
    merge_loras(full, [(lora, 1.0)])
    expected = full(**transformer_inputs(full.config))
    quantize_blocks(full)  # the best fp8 can do: merge first, quantize once
    best = relative_error(full(**transformer_inputs(full.config)), expected)
    error = relative_error(fp8(**transformer_inputs(fp8.config)), expected)
    assert error < 1.5 * best < relative_error(before, expected)


def test_fp8_composes_with_block_swap(tiny_ckpt, plain_frames):
    request = Request(image=Image.open(GOLDENS / "start.png"), **SMALL)
    fp8 = load_pipeline(tiny_ckpt, options=EngineOptions(weights="fp8_e4m3fn")).generate(request).frames
    assert not torch.equal(fp8, plain_frames)  # the option reaches the weights
    swapped = load_pipeline(tiny_ckpt, options=EngineOptions(weights="fp8_e4m3fn", offload="block_swap",
                                                             blocks_on_device=1))
    assert torch.equal(swapped.generate(request).frames, fp8)


# --- attention kernels, fused QKV, compile ------------------------------------------------

@pytest.fixture(scope="module")
def rotary_model():
    """A random tiny transformer on the rotary path (the 5B I2V family's), to cover RoPE."""
    from droplet_core.configs import TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig(num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16,
                               time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8,
                               sample_frames=5, use_rotary_positional_embeddings=True)
    model = DropletVideoTransformer3DModel(config).eval().requires_grad_(False)
    model.init_buffers()
    return model


def rotary_forward(model):
    return model(**transformer_inputs(model.config), image_rotary_emb=model.rotary(2, 8, 8))


def test_sdpa_processor_is_diffusers_cogvideox_attention(rotary_model):
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    from droplet_core.attention import set_attention

    assert isinstance(rotary_model.transformer_blocks[0].attn1.processor, CogVideoXAttnProcessor2_0)
    expected = rotary_forward(rotary_model)
    set_attention(rotary_model, "sdpa")
    try:
        assert torch.equal(rotary_forward(rotary_model), expected)
    finally:
        for block in rotary_model.transformer_blocks:
            block.attn1.set_processor(CogVideoXAttnProcessor2_0())


def test_sage_routes_through_sageattn(monkeypatch, rotary_model):
    from droplet_core.attention import set_attention

    calls = []

    def sageattn(q, k, v, tensor_layout, is_causal):
        calls.append((tensor_layout, is_causal, q.shape))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    expected = rotary_forward(rotary_model)
    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    model = DropletVideoTransformer3DModel(rotary_model.config).eval()
    model.load_state_dict(rotary_model.state_dict())
    model.init_buffers()
    set_attention(model, "sage")
    assert torch.equal(rotary_forward(model), expected)
    assert [c[:2] for c in calls] == [("HND", False)] * 2 and calls[0][2] == (2, 2, 7 + 2 * 4 * 4, 16)


def test_sage_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", None)  # makes `import sageattention` fail
    with pytest.raises(ValueError, match=r"pip install sageattention.*or use attention 'sdpa'"):
        EngineOptions(attention="sage").check()


def test_fused_qkv_equals_unfused(rotary_model):
    from droplet_core.attention import fuse_qkv

    model = DropletVideoTransformer3DModel(rotary_model.config).eval().requires_grad_(False)
    model.load_state_dict(rotary_model.state_dict())
    model.init_buffers()
    fuse_qkv(model, torch.float32)
    attn = model.transformer_blocks[0].attn1
    assert hasattr(attn, "to_qkv") and not hasattr(attn, "to_q")
    torch.testing.assert_close(rotary_forward(model), rotary_forward(rotary_model), rtol=1e-5, atol=1e-5)


def test_compile_wraps_each_block(tiny_ckpt, plain_output):
    from droplet_core.engine_options import compile_blocks

    graphs = []

    def counting_backend(graph, example_inputs):  # what inductor would receive, run as is
        graphs.append(graph)
        return graph.forward

    model = fresh_transformer(tiny_ckpt)
    compile_blocks(model, counting_backend)
    torch._dynamo.reset()
    assert torch.equal(model(**transformer_inputs(model.config)), plain_output)
    assert len(graphs) >= len(model.transformer_blocks)
