"""Parity of the native MODEL with the official pipeline: every golden case (tests/goldens,
made by the reference) run through the nodes (Text Encode, Image Encode or Empty
Conditioning, VAE Encode for video-to-video, DropletVideo Sampler, VAE Decode) on the native
ComfyUI model, each step's latents within 1e-4 of the reference's. A case whose "files" change
the checkpoint's config files loads that copy through the Model Loader, as a user's folder."""

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from droplet_core.conditioning import i2v_video_and_mask
from droplet_core.shapes import round_frames
from droplet_core.text import NEGATIVE_PROMPT
from goldens.make_goldens import checkpoint_variant, v2v_input
from node_fixtures import GOLDENS, as_image, loaded, run, scale_of  # noqa: F401

CASES = json.loads((GOLDENS / "cases.json").read_text())
ATOL = 1e-4


@pytest.fixture
def recorded_steps(pack, monkeypatch):
    """The engine-layout latents [1, F, C, h, w] the sampler node hands its progress callback."""
    sampler = importlib.import_module(f"{pack.__name__}.nodes.sampler")
    steps, original = [], sampler.comfy_on_step

    def recording(total, projection=None):
        on_step = original(total, projection)

        def record(index, total_steps, latents):
            steps.append(latents.detach().float().cpu().clone())
            on_step(index, total_steps, latents)
        return record

    monkeypatch.setattr(sampler, "comfy_on_step", recording)
    return steps


def components_for(pack, loaded, models_dir, name, case):
    """(MODEL, VAE, text encoder) of the case's checkpoint: the tiny one, or its variant in
    ComfyUI/models/DropletVideo/ loaded by the Model Loader."""
    if not case.get("files"):
        return loaded
    folder = models_dir / "DropletVideo" / f"variant_{name}"
    if not folder.exists():
        checkpoint_variant(models_dir / "DropletVideo" / "tiny", case["files"], folder)
    return run(pack, "DropletVideoModelLoader", model_folder=folder.name, precision="fp32")


def conditioning(pack, loaded, case, positive, negative):
    """(positive, negative, latent) from the node the case's workflow would use, and the video
    latent to re-generate (video-to-video), or None."""
    size = dict(width=case["width"], height=case["height"], frames=case["frames"], fps=case["fps"])
    start = Image.open(GOLDENS / "start.png") if case.get("start", True) else None
    end = Image.open(GOLDENS / "end.png") if case.get("end") else None
    if start is None:
        out = run(pack, "DropletVideoEmptyConditioning", positive=positive, negative=negative, **size)
    else:
        out = run(pack, "DropletVideoImageEncode", positive=positive, negative=negative, vae=loaded[1], **size,
                  resize_mode="stretch",
                  noise_augmentation=loaded[0].model.droplet_config.add_noise_in_inpaint_model,
                  noise_aug_strength=0.0563, noise_aug_seed=case["seed"], vae_tiling=False,
                  start_image=as_image(start), end_image=None if end is None else as_image(end))
    if case.get("strength", 1.0) >= 1.0:
        return out, None
    frames = round_frames(case["frames"])
    if case.get("i2v_video"):  # the reference noises its conditioning video when it gets no input video
        video = i2v_video_and_mask(frames, case["width"], case["height"], start, end)[0][0].permute(1, 2, 3, 0)
    else:
        video = v2v_input(frames, case["height"], case["width"])[0].permute(1, 2, 3, 0)
    latent = run(pack, "DropletVideoVAEEncode", vae=loaded[1], image=video, tiling=False, seed=case["seed"])[0]
    return out, latent


@pytest.mark.parametrize("name", sorted(CASES))
def test_native_model_through_the_nodes_reproduces_reference(name, pack, loaded, models_dir, recorded_steps):
    case = CASES[name]
    golden = load_file(str(GOLDENS / f"{name}.safetensors"))
    loaded = components_for(pack, loaded, models_dir, name, case)
    positive, negative = run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], prompt=case["prompt"],
                             negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=case.get("suffix", True),
                             max_tokens=case["max_sequence_length"])
    (positive, negative, empty), video = conditioning(pack, loaded, case, positive, negative)
    latent = run(pack, "DropletVideoSampler", model=loaded[0], positive=positive,
                 negative=negative, latent=empty if video is None else video, steps=case["steps"],
                 cfg=case["guidance_scale"], seed=case["seed"], scheduler="ddim",
                 use_dynamic_cfg=case.get("use_dynamic_cfg", False), denoise=case.get("strength", 1.0))[0]

    steps = sorted((k for k in golden if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    assert len(recorded_steps) == len(steps)
    for key, ours in zip(steps, recorded_steps):
        ours = ours[0, :, :, ::4, ::4] if key.endswith("_sub4") else ours[0]
        torch.testing.assert_close(ours, golden[key], atol=ATOL, rtol=0, msg=f"{name} {key}")
    frames = run(pack, "DropletVideoVAEDecode", vae=loaded[1], latent=latent, tiling=False, trim_to_frames=False)[0]
    assert frames.shape[0] == int(golden["frames"])
    torch.testing.assert_close(frames.permute(3, 0, 1, 2)[:, :, ::8, ::8], golden["video_sub"], atol=ATOL, rtol=0)
    assert np.isfinite(frames.numpy()).all()
