"""Core context windows (Context Windows (Manual)) on the DropletVideo MODEL: Image Encode lets a
video longer than the positional table through when the MODEL's windows fit the table and refuses it
early otherwise; the native model takes one window at a time (its concat channels and positional rows
for the window's frames, the FPS whole); core's KSampler with the windows gives every frame and never
calls the model with more frames than the table. The sampling tests need a real ComfyUI
(COMFYUI_PATH: ComfyUI 0.33 and January 2026); the rest also runs on the stand-in, whose
comfy_extras/nodes_context_windows.py sets what the real node sets."""

import importlib
import os

import comfy.conds
import comfy.patcher_extension
import pytest
import torch

from droplet_core.tiny import TRANSFORMER
from node_fixtures import as_image, conditioned, conds, image_cond, loaded, run, sample, start_image  # noqa: F401

TABLE = TRANSFORMER.latent_frames  # 23 latent frames = 89 video frames
SMALL = dict(width=32, height=32)
LONG_FRAMES = 121  # 31 latent frames: past the table
NOISE = 16
REAL = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="core samplers need a real ComfyUI: set "
                          "COMFYUI_PATH")


def with_context_windows(model, context_length: int, dim: int = 2, overlap: int = 4):
    """The MODEL as core Context Windows (Manual) returns it (static windows, pyramid fuse)."""
    node = importlib.import_module("comfy_extras.nodes_context_windows").ContextWindowsManualNode
    return node.execute(model, context_length=context_length, context_overlap=overlap,
                        context_schedule="standard_static", context_stride=1, closed_loop=False,
                        fuse_method="pyramid", dim=dim, freenoise=False).args[0]


def causal_fix(model) -> int:
    """1 where this ComfyUI's handler adds the frame before each window (0.33), else 0 (0.8.0)."""
    return int(getattr(model.model_options["context_handler"], "causal_window_fix", False))


@pytest.fixture(scope="module")
def fix(loaded):
    return causal_fix(with_context_windows(loaded[0], 4))


def long_cond(pack, loaded, start_image, model=None, frames=LONG_FRAMES):
    node, inputs = image_cond(pack, loaded[1], start=as_image(start_image), **SMALL, frames=frames)
    if model is not None:
        inputs["model"] = model
    return node, inputs


# Image Encode's early check -------------------------------------------------------------------------

def test_image_encode_refuses_past_the_table_without_context_windows(pack, loaded, conds, start_image):
    with pytest.raises(ValueError, match=r"31 latent frames exceed the positional table.*core Context Windows "
                                         rf"\(Manual\) on the MODEL \(dim 2, context_length at most {TABLE - 1}"):
        conditioned(pack, conds, long_cond(pack, loaded, start_image, loaded[0]))


def test_image_encode_lets_the_length_through_with_context_windows_that_fit(pack, loaded, conds, start_image, fix):
    model = with_context_windows(loaded[0], TABLE - fix)
    positive, _, latent = conditioned(pack, conds, long_cond(pack, loaded, start_image, model))
    assert latent["samples"].shape == (1, NOISE, 31, 4, 4)
    assert positive[0][1]["concat_latent_image"].shape[2] == 31


@pytest.mark.parametrize("dim, extra, message", [
    (2, 1, rf"give the model {TABLE + 1} latent frames.*more than its positional table's {TABLE}.*"
           r"context_length to at most"),
    (0, 0, r"cut along dim 0; DropletVideo's frames are dim 2.*set dim to 2")])
def test_context_windows_that_cannot_fit_are_refused_before_the_vae_encode(pack, loaded, conds, start_image, fix,
                                                                           monkeypatch, dim, extra, message):
    vae = loaded[1].patcher.model.module
    monkeypatch.setattr(vae.encoder, "forward", lambda *args, **kwargs: pytest.fail("the VAE encode ran"))
    model = with_context_windows(loaded[0], TABLE - fix + extra, dim=dim)
    with pytest.raises(ValueError, match=message):
        conditioned(pack, conds, long_cond(pack, loaded, start_image, model))


def test_the_droplet_sampler_refuses_context_windows_instead_of_dropping_them(pack, loaded, conds, start_image):
    model = with_context_windows(loaded[0], 4)
    with pytest.raises(ValueError, match=r"core context windows.*KSampler.*long_video"):
        sample(pack, model, conds, long_cond(pack, loaded, start_image, frames=9), steps=1)


# The native model, one window at a time ---------------------------------------------------------------

def model_conds(base, positive, latent):
    """The model's conditions as core samplers build them (extra_conds on the conditioning's options)."""
    noise = torch.zeros_like(latent["samples"])
    return base.extra_conds(noise=noise, device=noise.device, **positive[0][1])


def test_the_native_model_takes_a_window_of_a_long_video_and_refuses_the_whole(pack, loaded, conds, start_image):
    positive, _, latent = conditioned(pack, conds, long_cond(pack, loaded, start_image))
    base = loaded[0].model
    extra = model_conds(base, positive, latent)
    concat, fps = extra["c_concat"], extra["fps"]
    # What core's handler slices: conditions one frame long per latent frame along dim 2 (c_concat), not fps.
    assert isinstance(concat, comfy.conds.CONDNoiseShape) and concat.cond.shape[2] == 31
    assert fps.cond.ndim < 2 and fps.cond.tolist() == [8]
    window = list(range(31 - TABLE, 31))
    x = torch.randn(1, NOISE, 31, 4, 4)
    sigma, text = torch.tensor([5.0]), positive[0][0]
    out = base.apply_model(x[:, :, window], sigma, c_concat=concat.cond[:, :, window], c_crossattn=text, fps=fps.cond)
    assert out.shape == (1, NOISE, TABLE, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"exceed the positional table.*Context Windows \(Manual\).*long_video"):
        base.apply_model(x, sigma, c_concat=concat.cond, c_crossattn=text, fps=fps.cond)


# Core's KSampler with context windows (real ComfyUI) ----------------------------------------------------

def record_model_calls(model) -> list:
    """Each diffusion-model call's window (frame indices, the causal-fix frame first), latent frames,
    concat channels and FPS; a call past the table fails the test where it happens."""
    calls = []

    def recorder(executor, x, timestep, context, fps, transformer_options, **kwargs):
        assert x.shape[2] <= TABLE, f"the model was called with {x.shape[2]} latent frames (table: {TABLE})"
        window = transformer_options.get("context_window")
        anchor = getattr(window, "causal_anchor_index", None)
        indices = ([anchor] if anchor is not None and anchor >= 0 else []) + list(window.index_list) if window else None
        calls.append({"indices": indices, "frames": x.shape[2], "concat": x[:, NOISE:].clone(), "fps": fps})
        return executor(x, timestep, context, fps, transformer_options, **kwargs)

    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "droplet_test_calls", recorder)
    return calls


def ksampler(model, positive, negative, latent, steps=2):
    nodes = importlib.import_module("nodes")
    return nodes.KSampler().sample(model, 3, steps, 6.0, "euler", "simple", positive, negative, latent)[0]


@REAL
def test_core_context_windows_give_every_frame_and_no_window_exceeds_the_table(pack, loaded, conds, start_image,
                                                                               fix):
    model = with_context_windows(loaded[0], TABLE - fix)
    calls = record_model_calls(model)
    positive, negative, latent = conditioned(pack, conds, long_cond(pack, loaded, start_image, model))
    out = ksampler(model, positive, negative, latent)["samples"]

    assert out.shape == (1, NOISE, 31, 4, 4) and torch.isfinite(out).all()
    assert (out.abs().amax(dim=(0, 1, 3, 4)) > 0).all()  # every frame written
    assert len(calls) >= 4 and max(c["frames"] for c in calls) == TABLE  # 2 windows x 2 steps, the edge reached
    assert set().union(*(c["indices"] for c in calls)) == set(range(31))
    full = model_conds(model.model, positive, latent)["c_concat"].cond
    for call in calls:
        assert call["frames"] == len(call["indices"])
        expected = full[:, :, call["indices"]].expand(call["concat"].shape[0], -1, -1, -1, -1)
        torch.testing.assert_close(call["concat"], expected, atol=0, rtol=0)  # the window's own concat frames
        assert call["fps"].reshape(-1).tolist() in ([8], [8, 8])  # the FPS whole, never sliced


@REAL
def test_core_sampler_past_the_table_without_context_windows_says_how(pack, loaded, conds, start_image):
    positive, negative, latent = conditioned(pack, conds, long_cond(pack, loaded, start_image))
    with pytest.raises(ValueError, match=r"31 latent frames exceed.*core Context Windows \(Manual\) on the MODEL"):
        ksampler(loaded[0], positive, negative, latent, steps=1)
