"""LoRA merging in both key styles, the FPS sweep, and resolution buckets."""

import pytest
import torch
from safetensors.torch import save_file

from droplet_core.loading import load_transformer
from droplet_core.lora import merge_loras, read_lora
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.shapes import size_for_budget
from engine_fixtures import start_image, tiny_ckpt  # noqa: F401
from lora_files import write_kohya, write_peft

LAYERS = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"]


def lora_factors(model, rank=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    factors = {}
    for name in LAYERS:
        out_dim, in_dim = params[f"{name}.weight"].shape
        factors[name] = (torch.randn(rank, in_dim, generator=generator), torch.randn(out_dim, rank, generator=generator))
    return factors


def test_lora_merge_equals_hand_merge_and_reports_unknown_keys(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt / "transformer")
    factors = lora_factors(model)
    write_peft(tmp_path / "a.safetensors", factors, alpha=2.0, stray_key=True)
    expected = {name: p.clone() for name, p in model.named_parameters()}
    for name, (down, up) in factors.items():
        expected[f"{name}.weight"] += 0.7 * (2.0 / 4) * (up @ down)
    unknown = merge_loras(model, [(str(tmp_path / "a.safetensors"), 0.7)])
    assert unknown == ["transformer.not_a_layer.lora_A.weight"]
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, expected[name], atol=1e-5, rtol=0)


def test_kohya_and_diffusers_styles_agree_and_strength_zero_is_a_no_op(tiny_ckpt, tmp_path):
    base = load_transformer(tiny_ckpt / "transformer")
    factors = lora_factors(base)
    write_peft(tmp_path / "d.safetensors", factors, alpha=8.0)
    write_kohya(tmp_path / "k.safetensors", factors, alpha=8.0)
    assert set(read_lora(tmp_path / "k.safetensors", base).layers) == set(LAYERS)
    merged_d, merged_k, zero = (load_transformer(tiny_ckpt / "transformer") for _ in range(3))
    merge_loras(merged_d, [(str(tmp_path / "d.safetensors"), 1.0)])
    merge_loras(merged_k, [(str(tmp_path / "k.safetensors"), 1.0)])
    merge_loras(zero, [(str(tmp_path / "k.safetensors"), 0.0)])
    for (name, a), b, z, original in zip(merged_d.named_parameters(), merged_k.parameters(), zero.parameters(),
                                         base.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(z, original), name
    assert not torch.equal(merged_d.transformer_blocks[0].attn1.to_q.weight, base.transformer_blocks[0].attn1.to_q.weight)


def test_stacked_loras_add_up(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt / "transformer")
    write_peft(tmp_path / "one.safetensors", lora_factors(model, seed=1))
    write_peft(tmp_path / "two.safetensors", lora_factors(model, seed=2))
    stacked = load_transformer(tiny_ckpt / "transformer")
    merge_loras(stacked, [(str(tmp_path / "one.safetensors"), 0.5), (str(tmp_path / "two.safetensors"), 0.25)])
    one_then_two = load_transformer(tiny_ckpt / "transformer")
    merge_loras(one_then_two, [(str(tmp_path / "one.safetensors"), 0.5)])
    merge_loras(one_then_two, [(str(tmp_path / "two.safetensors"), 0.25)])
    for a, b in zip(stacked.parameters(), one_then_two.parameters()):
        assert torch.equal(a, b)


def test_a_lora_for_another_model_is_refused(tiny_ckpt, tmp_path):
    save_file({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 8)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(ValueError, match="no key of this LoRA matches"):
        read_lora(tmp_path / "sd.safetensors", load_transformer(tiny_ckpt / "transformer"))


def test_a_lora_whose_factors_disagree_in_rank_is_refused_by_name(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt / "transformer")
    width = model.transformer_blocks[0].attn1.to_q.in_features
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, width),
               "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(width, 8)},
              str(tmp_path / "ranks.safetensors"))
    with pytest.raises(ValueError, match=f"LoRA layer transformer_blocks.0.attn1.to_q: up \\({width}, 8\\) has rank 8 "
                                         f"but down \\(4, {width}\\) has rank 4"):
        merge_loras(model, [(str(tmp_path / "ranks.safetensors"), 1.0)])


def test_fps_sweep_equals_separate_runs(tiny_ckpt, start_image):
    pipe = load_pipeline(tiny_ckpt)
    request = Request(prompt="a panda", image=start_image, width=128, height=128, frames=5, steps=2, seed=8)
    sweep = pipe.generate_fps_sweep(request, [4, 32])
    for fps, result in zip([4, 32], sweep):
        request.fps = fps
        assert torch.equal(result.frames, pipe.generate(request).frames)
    assert not torch.equal(sweep[0].frames, sweep[1].frames)


@pytest.mark.parametrize("image_size,budget,expected", [((1920, 1080), 512, (688, 384)), ((1000, 1000), 640, (640, 640)),
                                                        ((480, 640), 896, (768, 1040))])
def test_resolution_buckets_keep_aspect_and_multiples_of_16(image_size, budget, expected):
    width, height = size_for_budget(*image_size, budget)
    assert (width, height) == expected
    assert width % 16 == 0 and height % 16 == 0


class ConstantPerWindow(torch.nn.Module):
    """Predicts, for each window, a constant equal to the window's first frame index."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def rotary(self, *args):
        return None

    def forward(self, x, text, t, fps, inpaint=None, image_rotary_emb=None, **kwargs):
        return torch.full_like(x, float(x[0, 0, 0, 0, 0]))


def test_window_seams_are_ramps_not_jumps():
    from droplet_core.long_video import SlidingWindowTransformer, window_starts
    from droplet_core.tiny import TRANSFORMER

    frames, window, overlap = 10, 4, 2
    assert window_starts(frames, window, overlap) == [0, 2, 4, 6]
    x = torch.arange(frames, dtype=torch.float32)[None, :, None, None, None].expand(1, frames, 16, 2, 2)
    blended = SlidingWindowTransformer(ConstantPerWindow(TRANSFORMER), window, overlap)(x, None, None, None)
    per_frame = blended[0, :, 0, 0, 0]
    assert per_frame[0] == 0 and per_frame[-1] == 6
    steps = per_frame.diff()
    # Neighbouring windows differ by 2; hard stitching would jump by 2 in one frame.
    assert (steps >= 0).all() and steps.max() <= 2 * 2 / 3 + 1e-6


def test_long_video_twice_the_trained_length(tiny_ckpt, start_image):
    from droplet_core.long_video import window_starts
    from droplet_core.tiny import TRANSFORMER

    pipe = load_pipeline(tiny_ckpt)
    frames = 2 * (TRANSFORMER.max_video_frames - 1) + 1  # 177 frames = 45 latent frames, the model knows 23
    latents = (frames - 1) // 4 + 1
    request = Request(prompt="a panda", image=start_image, width=64, height=64, frames=frames, steps=2)
    with pytest.raises(ValueError, match="long-video mode"):
        pipe.generate(request)
    request.long_video = True
    windows = []  # what the transformer is given: table-long windows (the tiny's 23) at latent frames 0, 11, 22
    pipe.transformer.register_forward_pre_hook(  # inpaint_latents: 5th positional, or by name
        lambda module, args, kwargs: windows.append((args[0], (args + (kwargs.get("inpaint_latents"),))[4])),
        with_kwargs=True)
    result = pipe.generate(request)
    assert result.latents.shape[1] == latents and result.frames.shape == (frames, 64, 64, 3)
    assert torch.isfinite(result.frames).all()
    window = TRANSFORMER.latent_frames
    assert [x.shape[1] for x, _ in windows] == [window] * 3 * request.steps
    starts = window_starts(latents, window, window // 2)
    assert len(starts) == 3
    for step in range(request.steps):
        (x0, i0), (x1, i1), (x2, i2) = windows[3 * step:3 * step + 3]
        for (a, b), (first, second) in zip(((x0, x1), (i0, i1), (x1, x2), (i1, i2)),
                                           [starts[:2]] * 2 + [starts[1:]] * 2):
            shared = window - (second - first)  # the same latent frames seen by two windows
            assert torch.equal(a[:, second - first:], b[:, :shared])
        assert not torch.equal(x0, x2) and not torch.equal(i0, i2)


def test_sliding_windows_blend_the_models_windows_with_ramps(tiny_ckpt):
    """SlidingWindowTransformer on the tiny model against the blend written out here: windows of the
    model's length W (23 latent frames on tiny-v4) at 0, W - W // 2 and the last flush with the end,
    each weighted 1 inside and by a ramp k / (W // 2 + 1) over the W // 2 frames at an edge shared
    with a neighbour, the weighted sum divided by the summed weights."""
    from droplet_core.long_video import SlidingWindowTransformer

    model = load_transformer(tiny_ckpt / "transformer")
    frames, window = 43, model.config.latent_frames
    overlap = window // 2
    g = torch.Generator().manual_seed(0)
    x, inpaint = torch.randn(2, frames, 16, 4, 4, generator=g), torch.randn(2, frames, 17, 4, 4, generator=g)
    text = torch.randn(2, 7, model.config.text_embed_dim, generator=g)
    t, fps = torch.tensor([700, 700]), torch.tensor([8])
    total, weight_sum = torch.zeros_like(x), torch.zeros(frames)
    with torch.no_grad():
        blended = SlidingWindowTransformer(model)(x, text, t, fps, inpaint)
        for start in (0, window - overlap, frames - window):
            end = start + window
            weights = torch.tensor([min(1.0, (k + 1) / (overlap + 1) if start > 0 else 1.0,
                                        (window - k) / (overlap + 1) if end < frames else 1.0)
                                    for k in range(window)])
            prediction = model(x[:, start:end], text, t, fps, inpaint[:, start:end])
            total[:, start:end] += prediction * weights[None, :, None, None, None]
            weight_sum[start:end] += weights
    torch.testing.assert_close(blended, total / weight_sum[None, :, None, None, None], atol=1e-6, rtol=1e-5)


def test_long_video_within_the_trained_length_is_the_plain_path(tiny_ckpt, start_image):
    pipe = load_pipeline(tiny_ckpt)
    request = Request(prompt="a panda", image=start_image, width=128, height=128, frames=9, steps=2)
    plain = pipe.generate(request).frames
    request.long_video = True
    assert torch.equal(plain, pipe.generate(request).frames)


def test_step_cache_off_is_identical_and_on_skips_steps(tiny_ckpt, start_image):
    from droplet_core.step_cache import StepCache

    pipe = load_pipeline(tiny_ckpt)
    request = Request(prompt="a panda", image=start_image, width=128, height=128, frames=5, steps=12, seed=2)
    plain = pipe.generate(request).frames
    request.cache_threshold = 1e-9  # on, but nothing is similar enough to skip
    assert torch.equal(plain, pipe.generate(request).frames)

    cache = StepCache(0.5, pipe.transformer.config.num_layers)
    positive, negative = pipe.encode_prompts(request)
    x = torch.randn(2, 2, 16, 16, 16)
    text = torch.cat([negative, positive])
    with torch.no_grad():
        for t in (900, 899, 898, 897):
            pipe.transformer(x, text, torch.tensor([t, t]), torch.tensor([8]), torch.zeros(2, 2, 17, 16, 16),
                             block_runner=cache)
    assert (cache.computed_steps, cache.skipped_steps) == (1, 3)  # inputs barely change: reuse
    request.cache_threshold = 0.3
    last_block = []  # runs of the last block: one per computed step (CFG batches both halves)
    pipe.transformer.transformer_blocks[-1].register_forward_pre_hook(lambda module, args: last_block.append(1))
    cached = pipe.generate(request).frames
    computed = len(last_block)
    assert 0 < computed < request.steps  # some steps were skipped, some computed
    assert torch.equal(cached, pipe.generate(request).frames)  # deterministic
    assert len(last_block) == 2 * computed and not torch.equal(cached, plain)
    assert (cached - plain).abs().mean() < 0.05


def test_step_cache_keeps_one_history_per_long_video_window(tiny_ckpt, start_image):
    from droplet_core.long_video import SlidingWindowTransformer
    from droplet_core.step_cache import StepCache

    pipe = load_pipeline(tiny_ckpt)
    cache = StepCache(0.5, pipe.transformer.config.num_layers)
    windowed = SlidingWindowTransformer(pipe.transformer, window=2, overlap=1, on_window=cache.select_window)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 16, 8, 8, generator=g), torch.randn(2, 7, pipe.transformer.config.text_embed_dim,
                                                                       generator=g),
              torch.tensor([900, 900]), torch.tensor([8]), torch.randn(2, 4, 17, 8, 8, generator=g))
    with torch.no_grad():  # 4 latent frames: windows at 0, 1, 2, each seeing other frames
        first = windowed(*inputs, block_runner=cache)
        again = windowed(*inputs, block_runner=cache)  # the same input: each window reuses its own residual
    assert sorted(cache.windows) == [0, 1, 2] and (cache.computed_steps, cache.skipped_steps) == (3, 3)
    torch.testing.assert_close(again, first, atol=1e-5, rtol=0)

    request = Request(prompt="a panda", image=start_image, width=64, height=64, steps=3, long_video=True,
                      frames=2 * (pipe.transformer.config.max_video_frames - 1) + 1)
    plain = pipe.generate(request).frames
    request.cache_threshold = 1e-9  # on, but nothing is similar enough to skip
    assert torch.equal(pipe.generate(request).frames, plain)
