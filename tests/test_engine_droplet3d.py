"""Droplet3D in the engine: the model kind read from the files, its refusals, and the CLI's defaults."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from droplet_core.cli import apply_model_defaults, build_parser, request_from_args
from droplet_core.configs import TransformerConfig, config_from_dict, config_to_dict
from droplet_core.fp8 import save_fp8_transformer
from droplet_core.loading import checkpoint_kind, load_transformer, load_vae
from droplet_core.model_kind import DROPLET3D, DROPLETVIDEO
from engine_fixtures import GOLDENS, tiny_ckpt, tiny_droplet3d_ckpt  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "diffusion_pytorch_model.safetensors"


def copy_transformer(ckpt: Path, target: Path, class_name=None, drop_fps=False) -> Path:
    """The checkpoint's transformer folder copied, its `_class_name` replaced (None: removed)."""
    shutil.copytree(ckpt / "transformer", target)
    config = json.loads((target / "config.json").read_text())
    config.pop("_class_name")
    if class_name:
        config["_class_name"] = class_name
    (target / "config.json").write_text(json.dumps(config))
    if drop_fps:
        state = {k: v for k, v in load_file(str(target / WEIGHTS)).items() if not k.startswith("fps_")}
        save_file(state, str(target / WEIGHTS))
    return target


def test_each_folder_is_detected_from_its_files_not_its_name(tiny_ckpt, tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    assert checkpoint_kind(tiny_ckpt) == DROPLETVIDEO
    assert checkpoint_kind(tiny_droplet3d_ckpt) == DROPLET3D
    misnamed = tmp_path / "DropletVideo-V1.0-weights"
    shutil.copytree(tiny_droplet3d_ckpt, misnamed)
    assert checkpoint_kind(misnamed) == DROPLET3D
    model = load_transformer(misnamed / "transformer")
    assert model.config.kind == DROPLET3D and not model.has_fps
    assert not [k for k in model.state_dict() if k.startswith("fps")]


def test_without_a_droplet_class_name_the_weights_decide(tiny_ckpt, tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    d3 = copy_transformer(tiny_droplet3d_ckpt, tmp_path / "d3", "CogVideoXTransformer3DModel")
    dv = copy_transformer(tiny_ckpt, tmp_path / "dv")
    assert load_transformer(d3).config.kind == DROPLET3D
    assert load_transformer(dv).config.kind == DROPLETVIDEO
    # A single file without any config: the shapes give the config, the tensor names the kind.
    single = tmp_path / "droplet3d_transformer.safetensors"
    shutil.copyfile(tiny_droplet3d_ckpt / "transformer" / WEIGHTS, single)
    assert load_transformer(single).config.kind == DROPLET3D


def test_a_config_naming_the_other_model_is_refused_by_name(tiny_ckpt, tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    d3_weights = copy_transformer(tiny_droplet3d_ckpt, tmp_path / "a", "DropletVideoTransformer3DModel")
    with pytest.raises(ValueError, match=r"names DropletVideoTransformer3DModel \(DropletVideo\) but the weights "
                                         r"have no fps_embedding.\* tensors \(a Droplet3D transformer"):
        load_transformer(d3_weights)
    dv_weights = copy_transformer(tiny_ckpt, tmp_path / "b", "Droplet3DTransformer3DModel")
    with pytest.raises(ValueError, match=r"names Droplet3DTransformer3DModel \(Droplet3D\) but the weights hold "
                                         r"fps_embedding"):
        load_transformer(dv_weights)


def test_dropletvideo_weights_missing_the_fps_embedding_are_refused(tiny_ckpt, tmp_path):  # noqa: F811
    cut = copy_transformer(tiny_ckpt, tmp_path / "cut", "DropletVideoTransformer3DModel", drop_fps=True)
    with pytest.raises(ValueError, match="have no fps_embedding.* tensors .*Use the config.json that came with"):
        load_transformer(cut)


def test_dropletvideo_needs_fps_and_droplet3d_takes_no_notice_of_it(tiny_ckpt, tiny_droplet3d_ckpt):  # noqa: F811
    inputs = (torch.randn(1, 2, 16, 4, 4), torch.randn(1, 8, 32), torch.tensor([500.0]))
    inpaint = torch.randn(1, 2, 17, 4, 4)
    dv = load_transformer(tiny_ckpt / "transformer")
    with pytest.raises(ValueError, match="needs the FPS condition"):
        dv(*inputs, None, inpaint_latents=inpaint)
    d3 = load_transformer(tiny_droplet3d_ckpt / "transformer")
    without = d3(*inputs, None, inpaint_latents=inpaint)
    assert torch.equal(without, d3(*inputs, torch.tensor([16]), inpaint_latents=inpaint))
    # The conditioning vector is the time embedding alone (the reference's timestep_cond=None).
    t_emb = d3.time_proj(inputs[2])
    assert torch.equal(d3.embed_conditioning(inputs[2], None, torch.float32), d3.time_embedding(t_emb, None))


def test_the_kind_travels_with_a_config_dict_and_an_fp8_file(tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    model = load_transformer(tiny_droplet3d_ckpt / "transformer")
    written = config_to_dict(model.config)
    assert written["_class_name"] == "Droplet3DTransformer3DModel" and "model_kind" not in written
    assert config_from_dict(TransformerConfig, written, "test").kind == DROPLET3D
    with pytest.raises(ValueError, match="unknown config field 'model_kind'"):
        config_from_dict(TransformerConfig, {**written, "model_kind": "droplet3d"}, "test")
    fp8 = load_transformer(tiny_droplet3d_ckpt / "transformer", keep_fp8=True)
    save_fp8_transformer(fp8, tmp_path / "d3_fp8.safetensors")
    assert load_transformer(tmp_path / "d3_fp8.safetensors").config.kind == DROPLET3D


def test_a_folder_mixing_two_models_is_refused(tiny_ckpt, tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_droplet3d_ckpt, mixed)
    shutil.copyfile(tiny_ckpt / "model_index.json", mixed / "model_index.json")
    with pytest.raises(ValueError, match="names .*DropletVideo.* but .* is a Droplet3D transformer"):
        checkpoint_kind(mixed)


def test_droplet3d_vae_loads_and_refuses_the_other_block_names(tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    vae = load_vae(tiny_droplet3d_ckpt / "vae")
    assert vae.config.scaling_factor == 0.7
    shutil.copytree(tiny_droplet3d_ckpt / "vae", tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config["down_block_types"] = ["DropletVideoDownBlock3D"] * 4
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="AutoencoderKLDroplet3D .* takes Droplet3D\\* block types, but "
                                         "down_block_types holds 'DropletVideoDownBlock3D'"):
        load_vae(tmp_path / "vae")


def cli_request(ckpt, *flags):
    args = build_parser().parse_args(["--ckpt", str(ckpt), *flags])
    apply_model_defaults(args, checkpoint_kind(ckpt))
    return args, request_from_args(args)


def test_cli_takes_each_reference_defaults_from_the_detected_model(tiny_ckpt, tiny_droplet3d_ckpt):  # noqa: F811
    args, request = cli_request(tiny_droplet3d_ckpt)
    assert (request.width, request.height, request.frames, request.max_sequence_length) == (512, 512, 85, 450)
    assert (request.steps, request.guidance_scale, request.seed, args.playback_fps) == (50, 6.0, 42, 8)
    args, request = cli_request(tiny_ckpt)
    assert (request.width, request.height, request.frames, request.max_sequence_length) == (672, 384, 85, 400)
    assert (request.fps, args.playback_fps) == (16, 8)


@pytest.mark.parametrize("flags", [["--fps", "8"], ["--FPS", "16"], ["--fps_sweep", "4,8"]])
def test_cli_refuses_an_fps_for_droplet3d(tiny_droplet3d_ckpt, flags):  # noqa: F811
    with pytest.raises(ValueError, match=f"{flags[0] if flags[0] != '--FPS' else '--fps'}: Droplet3D has no FPS "
                                         f"condition"):
        cli_request(tiny_droplet3d_ckpt, *flags)


def test_cli_on_droplet3d_reproduces_the_reference_with_its_defaults(tiny_droplet3d_ckpt, tmp_path):  # noqa: F811
    """Only size, frames and steps given: the text length (450) and the rest come from the detected model,
    and the video equals the official pipeline's golden."""
    case = json.loads((GOLDENS / "droplet3d" / "cases.json").read_text())["default_pil"]
    out = tmp_path / "orbit.npz"
    args = ["--ckpt", str(tiny_droplet3d_ckpt), "--ref_img", str(GOLDENS / "start.png"), "--prompt", case["prompt"],
            "--width", "128", "--height", "128", "--video_length", "9", "--num_inference_steps", "3", "--out", str(out)]
    completed = subprocess.run([sys.executable, "-m", "droplet_core", *args], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "Droplet3D, no FPS condition, playback 8 fps" in completed.stdout
    frames = torch.from_numpy(np.load(out)["frames"])
    golden = load_file(str(GOLDENS / "droplet3d" / "default_pil.safetensors"))
    torch.testing.assert_close(frames.permute(3, 0, 1, 2)[:, :, ::8, ::8], golden["video_sub"], atol=1e-4, rtol=0)

    refused = subprocess.run([sys.executable, "-m", "droplet_core", *args, "--fps", "8"], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--fps: Droplet3D has no FPS condition" in refused.stderr
