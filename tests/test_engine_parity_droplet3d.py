"""Parity with the official Droplet3D pipeline (goldens from tests/goldens/make_goldens_droplet3d.py).

Each case ran the reference's pipeline.py (fp32, CPU) on the tiny Droplet3D checkpoint
(droplet_core.tiny_droplet3d); the engine, given only the folder, must detect Droplet3D and
reproduce every step's latents and the decoded video.
"""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from droplet_core.model_kind import DROPLET3D
from droplet_core.pipeline import Request, load_pipeline
from engine_fixtures import GOLDENS, tiny_droplet3d_ckpt  # noqa: F401

CASES = json.loads((GOLDENS / "droplet3d" / "cases.json").read_text())
ATOL = 1e-4


def request_for(case: dict) -> Request:
    # fps is left at the Request default: Droplet3D has no FPS input, so no value may change the result.
    return Request(prompt=case["prompt"], image=Image.open(GOLDENS / "start.png"),
                   end_image=Image.open(GOLDENS / "end.png") if case.get("end") else None,
                   width=case["width"], height=case["height"], frames=case["frames"], steps=case["steps"],
                   seed=case["seed"], guidance_scale=case["guidance_scale"],
                   max_sequence_length=case["max_sequence_length"])


@pytest.fixture(scope="module")
def pipe(tiny_droplet3d_ckpt):  # noqa: F811
    return load_pipeline(tiny_droplet3d_ckpt)


def test_folder_is_detected_as_droplet3d(pipe):
    assert pipe.kind == DROPLET3D
    assert not any(name.startswith("fps") for name, _ in pipe.transformer.named_parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_reproduces_droplet3d_reference(name, pipe):
    case = CASES[name]
    golden = load_file(str(GOLDENS / "droplet3d" / f"{name}.safetensors"))
    result = pipe.generate(request_for(case), keep_step_latents=True)

    steps = sorted((k for k in golden if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    assert len(result.step_latents) == len(steps)
    for key, ours in zip(steps, result.step_latents):
        ours = ours[0, :, :, ::4, ::4] if key.endswith("_sub4") else ours[0]
        torch.testing.assert_close(ours, golden[key], atol=ATOL, rtol=0, msg=f"{name} {key}")
    assert result.frames.shape[0] == int(golden["frames"])
    video_sub = result.frames.permute(3, 0, 1, 2)[:, :, ::8, ::8]
    torch.testing.assert_close(video_sub, golden["video_sub"], atol=ATOL, rtol=0)


def test_fps_value_changes_nothing_on_droplet3d(pipe):
    case = CASES["default_pil"]
    first = pipe.generate(Request(**{**request_for(case).__dict__, "fps": 4, "steps": 1}))
    second = pipe.generate(Request(**{**request_for(case).__dict__, "fps": 32, "steps": 1}))
    assert torch.equal(first.latents, second.latents)


def test_fps_sweep_is_refused_on_droplet3d(pipe):
    with pytest.raises(ValueError, match="FPS sweep needs the FPS condition, which Droplet3D does not have"):
        pipe.generate_fps_sweep(request_for(CASES["default_pil"]), [8, 16])
