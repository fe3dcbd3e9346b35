"""The nodes on the tiny checkpoint, against the ComfyUI stand-in (or a real ComfyUI, see
conftest.py): interfaces, the workflows' graphs equal to the engine, model management,
progress, Cancel, and the errors users meet."""

import importlib
import inspect
from pathlib import Path

import comfy.cli_args
import comfy.model_management
import comfy.utils
import numpy as np
import pytest
import torch
from PIL import Image

from droplet_core import preview
from droplet_core.conditioning import i2v_video_and_mask, inpaint_latents
from droplet_core.fp8 import quantize_t5
from droplet_core.loading import load_transformer
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.text import NEGATIVE_PROMPT, load_text_encoder, with_suffix
from droplet_core.tiny import SCHEDULER
from node_fixtures import (ATOL, GOLDENS, PROMPT, SAMPLING, SIZE, as_image, conditioned, conds,  # noqa: F401
                           empty_cond, engine, engine_frames, image_cond, loaded, run, sample, sample_and_decode,
                           scale_of)


@pytest.fixture
def spies(monkeypatch):
    """Records load_models_gpu calls and progress-bar updates (works with the real ComfyUI too)."""
    calls, updates = [], []
    original_load, original_bar = comfy.model_management.load_models_gpu, comfy.utils.ProgressBar

    def load_models_gpu(models, *args, **kwargs):
        calls.append((list(models), kwargs))
        return original_load(models, *args, **kwargs)

    class CountingBar(original_bar):
        def update_absolute(self, value, total=None, preview=None):
            updates.append((value, total))
            super().update_absolute(value, total, preview)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", load_models_gpu)
    monkeypatch.setattr(comfy.utils, "ProgressBar", CountingBar)
    return calls, updates


# Interfaces -------------------------------------------------------------------------------------

def test_every_node_declares_a_consistent_interface(pack):
    assert len(pack.NODE_CLASS_MAPPINGS) == 18
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert name.startswith("DropletVideo") and name == cls.__name__
        assert cls.CATEGORY == "DropletVideo" and cls.DESCRIPTION and name in pack.NODE_DISPLAY_NAME_MAPPINGS
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        spec = cls.INPUT_TYPES()
        required, optional = spec["required"], spec.get("optional", {})
        parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert list(parameters)[1:] == [*required, *optional], name
        assert all(parameters[k].default is None for k in optional), name
        for input_name, definition in {**required, **optional}.items():
            assert definition[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_node_files_stay_small():
    for path in (Path(__file__).parents[1] / "nodes").glob("*.py"):
        assert len(path.read_text().splitlines()) < 200, path.name


def test_latent_layout_round_trip(pack):
    layout = importlib.import_module(f"{pack.__name__}.nodes.latent_layout")
    engine_latents = torch.randn(2, 4, 16, 6, 8)  # [B, F, C, H, W]
    latent = layout.to_comfy(engine_latents)
    assert latent["samples"].shape == (2, 16, 4, 6, 8)  # ComfyUI's [B, C, F, H, W]
    assert torch.equal(latent["samples"][1, :, 3], engine_latents[1, 3])
    assert torch.equal(layout.from_comfy(latent), engine_latents)


def test_images_convert_exactly_and_fit_the_video_aspect(pack):
    images = importlib.import_module(f"{pack.__name__}.nodes.images")
    start = Image.open(GOLDENS / "start.png")
    assert np.array_equal(np.array(images.first_image(as_image(start), "start_image")), np.array(start))
    picture = Image.new("RGB", (150, 100), (255, 0, 0))
    assert images.fit(picture, 128, 128, "stretch") is picture
    assert images.fit(picture, 128, 128, "crop").size == (100, 100)
    assert images.fit(picture, 64, 128, "crop").size == (50, 100)
    padded = images.fit(picture, 128, 128, "pad")
    assert padded.size == (150, 150) and padded.getpixel((75, 10)) == (0, 0, 0)
    assert padded.getpixel((75, 75)) == (255, 0, 0)


# The workflows' graphs equal the engine -------------------------------------------------------------

def test_i2v_graph_equals_engine_with_model_management_and_progress(pack, loaded, conds, engine, spies):
    start = Image.open(GOLDENS / "start.png")
    calls, updates = spies
    frames = sample_and_decode(pack, loaded, conds, image_cond(pack, loaded[1], start=as_image(start)))
    expected = engine_frames(engine, image=start)
    assert frames.shape == expected.shape == (16, 128, 128, 3)  # 4 latent frames decode to 16 (quirk 3)
    torch.testing.assert_close(frames, expected, atol=ATOL, rtol=0)

    model, vae, _ = loaded
    assert [models for models, _ in calls] == [[vae.patcher], [model], [vae.patcher]]
    assert all(kwargs["memory_required"] > 0 for _, kwargs in calls)
    assert updates == [(1, 3), (2, 3), (3, 3)]
    loaded_now = comfy.model_management.loaded_models()
    assert model in loaded_now and vae.patcher in loaded_now


def test_start_and_end_frame_graph_equals_engine(pack, loaded, conds, engine):
    start, end = Image.open(GOLDENS / "start.png"), Image.open(GOLDENS / "end.png")
    cond = image_cond(pack, loaded[1], start=as_image(start), end=as_image(end), frames=9)
    frames = sample_and_decode(pack, loaded, conds, cond)
    expected = engine_frames(engine, image=start, end_image=end, frames=9)
    torch.testing.assert_close(frames, expected, atol=ATOL, rtol=0)


def test_noise_augmentation_equals_engine(pack, loaded, conds, models_dir):
    """For a model whose config says add_noise_in_inpaint_model (the goldens' noise_aug case)."""
    tiny, overrides = models_dir / "DropletVideo" / "tiny", {"add_noise_in_inpaint_model": True}
    engine = load_pipeline(tiny, device=comfy.model_management.get_torch_device())
    engine.transformer = load_transformer(tiny / "transformer", config_overrides=overrides)
    native = importlib.import_module(f"{pack.__name__}.nodes.native.loading")
    model = native.load_native_model(tiny / "transformer", torch.float32, scale_of(pack, engine.vae.config.scaling_factor),
                                     config_overrides=overrides)
    model.model.scheduler_config = loaded[0].model.scheduler_config
    start = Image.open(GOLDENS / "start.png")
    node, inputs = image_cond(pack, loaded[1], start=as_image(start), frames=9)
    cond = node, {**inputs, "noise_augmentation": True}
    frames = sample_and_decode(pack, (model, *loaded[1:]), conds, cond)
    torch.testing.assert_close(frames, engine_frames(engine, image=start, frames=9), atol=ATOL, rtol=0)


def test_t2v_graph_equals_engine(pack, loaded, conds, engine):
    frames = sample_and_decode(pack, loaded, conds, empty_cond(), seed=5)
    torch.testing.assert_close(frames, engine_frames(engine, seed=5), atol=ATOL, rtol=0)


def test_v2v_graph_equals_engine(pack, loaded, conds, engine):
    video = torch.rand(13, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    latent = run(pack, "DropletVideoVAEEncode", vae=loaded[1], image=video, tiling=False, seed=9)[0]
    assert latent["samples"].shape == (1, 16, 4, 16, 16)
    frames = sample_and_decode(pack, loaded, conds, empty_cond(), seed=9, steps=5, denoise=0.6, latent=latent)
    expected = engine_frames(engine, video=video, strength=0.6, steps=5, seed=9)
    torch.testing.assert_close(frames, expected, atol=ATOL, rtol=0)


def test_trim_to_frames_keeps_the_first_frames_of_the_full_decode(pack, loaded):
    latent = {"samples": torch.randn(1, 16, 4, 16, 16, generator=torch.Generator().manual_seed(4))}
    decode = dict(vae=loaded[1], latent=latent, tiling=False)
    full = run(pack, "DropletVideoVAEDecode", **decode, trim_to_frames=False)[0]
    trimmed = run(pack, "DropletVideoVAEDecode", **decode, trim_to_frames=True)[0]
    assert full.shape == (16, 128, 128, 3) and trimmed.shape == (13, 128, 128, 3)  # quirk 3: 4 per latent frame
    torch.testing.assert_close(trimmed, full[:13], atol=0, rtol=0)


def test_progress_previews_the_middle_frame_through_the_fitted_projection(pack, loaded, conds, engine,
                                                                         monkeypatch):
    start = Image.open(GOLDENS / "start.png")
    cond = image_cond(pack, loaded[1], start=as_image(start), frames=9)
    video, mask = i2v_video_and_mask(9, 128, 128, start)
    encoded = inpaint_latents(engine.vae, video, mask, (3, 16, 16), torch.float32, None, None, False)
    scale = engine.vae.config.scaling_factor
    expected_projection = preview.fit_rgb_projection(encoded[0, 0, 1:] / scale, video[0, :, 0])  # LATENT's space
    positive, _, latent = conditioned(pack, conds, cond)
    assert "droplet_rgb_projection" not in positive[0][1]  # it travels in the LATENT, not in CONDITIONING
    projection = latent["droplet_rgb_projection"]
    for ours, theirs in zip(projection, expected_projection):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    previews = []

    class RecordingBar(comfy.utils.ProgressBar):
        def update_absolute(self, value, total=None, preview=None):
            previews.append(preview)
            super().update_absolute(value, total, preview)

    monkeypatch.setattr(comfy.utils, "ProgressBar", RecordingBar)
    sample(pack, loaded[0], conds, cond)
    assert previews == [None] * 3  # ComfyUI's default preview method: none
    monkeypatch.setattr(comfy.cli_args.args, "preview_method", comfy.cli_args.LatentPreviewMethod.Latent2RGB)
    previews.clear()
    sample(pack, loaded[0], conds, cond)
    steps = engine.generate(Request(prompt=PROMPT, image=start, **{**SIZE, "frames": 9}, fps=8, steps=3, seed=42),
                            keep_step_latents=True).step_latents
    assert len(previews) == len(steps) == 3
    for (kind, picture, max_size), latents in zip(previews, steps):
        assert kind == "JPEG" and max_size == comfy.cli_args.args.preview_size and picture.size == (16, 16)
        expected = preview.latents_to_rgb(latents[0, latents.shape[1] // 2] / scale, projection).numpy()
        assert np.abs(np.array(picture).astype(int) - expected).max() <= 1
    previews.clear()
    sample(pack, loaded[0], conds, empty_cond(frames=9))
    assert previews == [None] * 3  # text-to-video without a VAE: nothing to fit a projection on
    t2v = empty_cond(frames=9, vae=loaded[1])
    t2v_projection = conditioned(pack, conds, t2v)[2]["droplet_rgb_projection"]
    pattern = preview.color_pattern(128)
    with torch.no_grad():
        latent = engine.vae.encode((pattern * 2 - 1)[None, :, None]).latent_dist.mode()[0, :, 0]
    expected_projection = preview.fit_rgb_projection(latent, pattern)
    for ours, theirs in zip(t2v_projection, expected_projection):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    previews.clear()
    latent = sample(pack, loaded[0], conds, t2v)["samples"]
    assert len(previews) == 3 and all(p is not None for p in previews)
    last = latent[0, :, latent.shape[2] // 2]  # ComfyUI's [B, C, F, H, W]: the middle frame's channels
    expected = preview.latents_to_rgb(last, t2v_projection).numpy()
    assert np.abs(np.array(previews[-1][1]).astype(int) - expected).max() <= 1


# Model management, Cancel ------------------------------------------------------------------------------

def test_loaders_keep_nothing_once_comfyui_drops_their_outputs(pack, models_dir, monkeypatch):
    """No module-level cache: ComfyUI's node cache is the only owner, so "Free model and node
    cache" (unload, then drop the outputs) frees the weights, and a file replaced on disk is read anew.
    The full collection after it hands the freed C heap back (malloc_trim), once."""
    import gc
    import weakref
    gc.collect()  # models of earlier tests trim now, not in this test's count
    trims = []
    release = importlib.import_module(f"{pack.__name__}.nodes.heap_release").installed()
    monkeypatch.setattr(release, "malloc_trim", trims.append)
    model, vae, text_encoder = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")
    probes = [weakref.ref(model.model.diffusion_model), weakref.ref(vae.patcher.model.module),
              weakref.ref(text_encoder.patcher.model.module)]
    comfy.model_management.load_models_gpu([model])
    again = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")
    assert again[0] is not model and again[0].model is not model.model  # a fresh load, not a cached one
    comfy.model_management.unload_all_models()
    del model, vae, text_encoder, again
    trims.clear()  # a full collection may run on its own while loading
    gc.collect()
    assert [probe() for probe in probes] == [None, None, None]
    assert trims == [0]


def test_a_run_after_free_and_heap_trim_gives_the_first_runs_frames(pack, models_dir):
    """A whole i2v run, "Free model and node cache" (unload, drop every output, the full collection
    that hands the freed heap back), then the same run on a fresh load: the same video, bit for bit."""
    import gc
    import weakref
    start = as_image(Image.open(GOLDENS / "start.png"))

    def whole_run():
        model, vae, text_encoder = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")
        prompts = run(pack, "DropletVideoTextEncode", text_encoder=text_encoder, prompt=PROMPT,
                      negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=True, max_tokens=400)
        frames = sample_and_decode(pack, (model, vae), prompts, image_cond(pack, vae, start=start, frames=5), steps=2)
        return frames, weakref.ref(model.model.diffusion_model)

    first, first_model = whole_run()
    comfy.model_management.unload_all_models()
    gc.collect()
    assert first_model() is None  # freed: the next run loads anew
    second, _ = whole_run()
    assert torch.isfinite(first).all() and first.abs().max() > 0
    torch.testing.assert_close(second, first, atol=0, rtol=0)


def test_interrupt_stops_the_sampler_and_the_next_run_works(pack, loaded, conds):
    cond = conditioned(pack, conds, empty_cond(frames=5))
    positive, negative, latent = cond
    inputs = dict(model=loaded[0], positive=positive, negative=negative, latent=latent,
                  **{k: v for k, v in SAMPLING.items() if k != "fps"})
    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(pack, "DropletVideoSampler", **inputs)
    assert not comfy.model_management.processing_interrupted()
    assert run(pack, "DropletVideoSampler", **inputs)[0]["samples"].shape == (1, 16, 2, 16, 16)


def test_split_loaders_load_the_same_components(pack, loaded, models_dir):
    choices = pack.NODE_CLASS_MAPPINGS["DropletVideoT5Loader"].INPUT_TYPES()["required"]["text_encoder_name"][0]
    assert "tiny-t5" in choices
    model = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32")[0]
    vae = run(pack, "DropletVideoVAELoader", vae_name="tiny-vae", precision="fp32")[0]
    text_encoder = run(pack, "DropletVideoT5Loader", text_encoder_name="tiny-t5", precision="fp32")[0]
    for split, full in ((model.model, loaded[0].model), (vae.patcher.model, loaded[1].patcher.model),
                        (text_encoder.patcher.model, loaded[2].patcher.model)):
        a, b = split.state_dict(), full.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The transformer alone finds the release folder's scheduler/ (through the link), not a fallback.
    assert model.model.scheduler_config == loaded[0].model.scheduler_config == SCHEDULER
    with pytest.raises(ValueError, match="no T5 tokenizer"):
        run(pack, "DropletVideoT5Loader", text_encoder_name="t5-without-tokenizer", precision="fp32")


def test_t5_on_the_cpu_stays_there_and_encodes_the_same(pack, loaded, monkeypatch):
    monkeypatch.setattr(comfy.model_management, "get_torch_device", lambda: torch.device("cuda"))  # never asked
    on_cpu = run(pack, "DropletVideoT5Loader", text_encoder_name="tiny-t5", precision="fp32", device="cpu")[0]
    cpu = torch.device("cpu")
    assert (on_cpu.patcher.load_device, on_cpu.patcher.offload_device) == (cpu, cpu)
    inputs = dict(prompt="a boat", negative_prompt="", append_quality_suffix=True, max_tokens=20)
    for ours, default in zip(run(pack, "DropletVideoTextEncode", text_encoder=on_cpu, **inputs),
                             run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], **inputs)):
        torch.testing.assert_close(ours[0][0], default[0][0], atol=1e-6, rtol=0)


def test_t5_fp8_weights_encode_as_the_engine_and_close_to_full_precision(pack, loaded, models_dir):
    fp8 = run(pack, "DropletVideoT5Loader", text_encoder_name="tiny-t5", precision="fp32",
              weight_format="fp8_e4m3fn")[0]
    blocks = fp8.patcher.model.module.encoder.block
    assert blocks[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert blocks[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32  # T5 casts its input to wo's dtype
    inputs = dict(prompt="a boat", negative_prompt="", append_quality_suffix=True, max_tokens=20)
    ours = run(pack, "DropletVideoTextEncode", text_encoder=fp8, **inputs)[0][0][0]
    folder = models_dir / "DropletVideo" / "tiny"
    engine = load_text_encoder(folder / "text_encoder", folder / "tokenizer")
    quantize_t5(engine.model)
    torch.testing.assert_close(ours, engine.encode(with_suffix("a boat"), 20), atol=1e-6, rtol=0)
    full = run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], **inputs)[0][0][0]
    assert 0 < (ours - full).norm() / full.norm() < 0.1  # fp8 rounding (4% on the random tiny T5)


# ComfyUI's CLIP input -----------------------------------------------------------------------------------

class FakeClip:
    """ComfyUI's CLIP interface (tokenize -> {name: [[(id, weight), ...]]}, encode_from_tokens),
    here over the tiny T5 with ComfyUI's T5 tokenizer rules: end token, then padding to min_length."""

    def __init__(self, text_encoder, projection=None):
        self.tokenizer, self.model = text_encoder.tokenizer, text_encoder.patcher.model.module
        self.projection = projection

    def tokenize(self, text, return_word_ids=False, **kwargs):
        ids = self.tokenizer(text).input_ids
        ids += [0] * (kwargs.get("min_length", 77) - len(ids))
        return {"t5xxl": [[(i, 1.0) for i in ids]]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        ids = torch.tensor([[i for i, _ in tokens["t5xxl"][0]]])
        out = self.model(ids)[0]
        return out if self.projection is None else out @ self.projection


@pytest.mark.parametrize("prompt", ["short prompt", "a very long prompt " * 40])
def test_clip_input_encodes_like_the_t5_loader(pack, loaded, prompt):
    inputs = dict(prompt=prompt, negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=True, max_tokens=60)
    ours = run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], **inputs)
    via_clip = run(pack, "DropletVideoTextEncode", clip=FakeClip(loaded[2]), **inputs)
    for a, b in zip(ours, via_clip):
        assert a[0][0].shape == (1, 60, 32)
        torch.testing.assert_close(a[0][0], b[0][0], atol=1e-6, rtol=0)


def test_clip_with_the_wrong_hidden_size_fails_at_sampling(pack, loaded):
    clip = FakeClip(loaded[2], projection=torch.randn(32, 16))
    positive, negative = run(pack, "DropletVideoTextEncode", clip=clip, prompt="x", negative_prompt="",
                             append_quality_suffix=False, max_tokens=20)
    with pytest.raises(ValueError, match="hidden size 16, but the model expects text_embed_dim 32"):
        sample(pack, loaded[0], (positive, negative), empty_cond(frames=5))


# Errors -------------------------------------------------------------------------------------------------

def test_errors_name_the_fix(pack, loaded, conds):
    with pytest.raises(ValueError, match="'missing' was not found in ComfyUI's 'DropletVideo' folders"):
        run(pack, "DropletVideoModelLoader", model_folder="missing", precision="fp32")
    with pytest.raises(ValueError, match="empty image batch"):
        conditioned(pack, conds, image_cond(pack, loaded[1], start=torch.zeros(0, 128, 128, 3)))
    with pytest.raises(ValueError, match="width 500 is not a multiple of 16: use 496 or 512"):
        conditioned(pack, conds, image_cond(pack, loaded[1], width=500))
    with pytest.raises(ValueError, match="end_image needs a start_image"):
        conditioned(pack, conds, image_cond(pack, loaded[1], end=torch.zeros(1, 128, 128, 3)))
    with pytest.raises(ValueError, match="needs a text encoder"):
        run(pack, "DropletVideoTextEncode", prompt="x", negative_prompt="", append_quality_suffix=True, max_tokens=8)
    with pytest.raises(ValueError, match="Upscale Image"):
        run(pack, "DropletVideoVAEEncode", vae=loaded[1], image=torch.zeros(5, 100, 128, 3), tiling=False, seed=0)

    with pytest.raises(ValueError, match="this latent is empty: connect DropletVideo VAE Encode"):
        sample(pack, loaded[0], conds, empty_cond(frames=5), denoise=0.5)
    with pytest.raises(ValueError, match="does not fit the sampled latent"):
        sample(pack, loaded[0], conds, image_cond(pack, loaded[1], frames=5), latent={"samples": torch.ones(1, 16, 4, 16, 16)},
               denoise=0.5)
    with pytest.raises(ValueError, match="DropletVideo samples one video latent"):
        sample(pack, loaded[0], conds, empty_cond(frames=5), latent={"samples": torch.zeros(1, 4, 16, 16)})
