"""Droplet3D through the nodes, on the tiny Droplet3D checkpoint (droplet_core.tiny_droplet3d):
parity with the official pipeline's goldens (tests/goldens/droplet3d), the missing FPS path (ignored,
warned once, refused by FPS Sweep), the 450-token text length, a DropletVideo LoRA's FPS keys, the
orbit workflow and the bundled workflows run on it (docs/droplet3d.md has the table)."""

import importlib
import json
import logging

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import run_workflow as tool
from droplet_core.model_kind import DROPLET3D
from droplet_core.text import NEGATIVE_PROMPT
from lora_files import random_factors, write_peft
from node_fixtures import GOLDENS, as_image, loaded, run  # noqa: F401
from test_nodes_parity import recorded_steps  # noqa: F401
from test_workflows import ROOT, SMALL, by_type, info, load  # noqa: F401

CASES = json.loads((GOLDENS / "droplet3d" / "cases.json").read_text())
ATOL = 1e-4  # the step latents, as the DropletVideo node parity
ONE_LEVEL = 1 / 255  # the decoded frames: within one 8-bit level
FOLDER = "tiny-droplet3d"
FPS_WARNING = "no FPS condition"
ORBIT = "droplet3d_orbit_no_alignment"


@pytest.fixture(scope="module")
def tiny3d(models_dir, tmp_path_factory):
    """The tiny Droplet3D folder as ComfyUI/models/DropletVideo/tiny-droplet3d."""
    from droplet_core.tiny_droplet3d import ensure_tiny_droplet3d

    folder = ensure_tiny_droplet3d(tmp_path_factory.mktemp("tiny3d") / "Droplet3D-tiny")
    link = models_dir / "DropletVideo" / FOLDER
    if not link.is_symlink():
        link.symlink_to(folder)
    return folder


@pytest.fixture(scope="module")
def loaded3d(pack, tiny3d):
    return run(pack, "DropletVideoModelLoader", model_folder=FOLDER, precision="fp32")


def encode(pack, loaded3d, prompt="A red chair turns around.", max_tokens=DROPLET3D.max_sequence_length):
    return run(pack, "DropletVideoTextEncode", text_encoder=loaded3d[2], prompt=prompt,
               negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=True, max_tokens=max_tokens)


def image_encode(pack, loaded3d, conds, fps=8, width=64, height=64, frames=5, end=None):
    return run(pack, "DropletVideoImageEncode", positive=conds[0], negative=conds[1], vae=loaded3d[1], width=width,
               height=height, frames=frames, fps=fps, resize_mode="stretch", noise_augmentation=False,
               noise_aug_strength=0.0563, noise_aug_seed=42, vae_tiling=False,
               start_image=as_image(Image.open(GOLDENS / "start.png")), end_image=end)


def sample(pack, model, cond, steps=2, cfg=6.0, seed=42):
    return run(pack, "DropletVideoSampler", model=model, positive=cond[0], negative=cond[1], latent=cond[2],
               steps=steps, cfg=cfg, seed=seed, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)[0]


def test_the_loader_gives_a_droplet3d_model_without_fps_layers(loaded3d):
    model = loaded3d[0].model
    assert model.droplet_config.kind.name == DROPLET3D.name  # the pack imports its own copy of droplet_core
    assert not any("fps" in name for name, _ in model.diffusion_model.named_parameters())


@pytest.mark.parametrize("name", sorted(CASES))
def test_droplet3d_through_the_nodes_reproduces_the_reference(name, pack, loaded3d, recorded_steps):  # noqa: F811
    case = CASES[name]
    golden = load_file(str(GOLDENS / "droplet3d" / f"{name}.safetensors"))
    conds = encode(pack, loaded3d, case["prompt"], case["max_sequence_length"])
    end = as_image(Image.open(GOLDENS / "end.png")) if case.get("end") else None
    cond = image_encode(pack, loaded3d, conds, width=case["width"], height=case["height"], frames=case["frames"],
                        end=end)
    latent = sample(pack, loaded3d[0], cond, case["steps"], case["guidance_scale"], case["seed"])

    steps = sorted((k for k in golden if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    assert len(recorded_steps) == len(steps)
    for key, ours in zip(steps, recorded_steps):
        ours = ours[0, :, :, ::4, ::4] if key.endswith("_sub4") else ours[0]
        torch.testing.assert_close(ours, golden[key], atol=ATOL, rtol=0, msg=f"{name} {key}")
    frames = run(pack, "DropletVideoVAEDecode", vae=loaded3d[1], latent=latent, tiling=False, trim_to_frames=False)[0]
    assert frames.shape[0] == int(golden["frames"])
    torch.testing.assert_close(frames.permute(3, 0, 1, 2)[:, :, ::8, ::8], golden["video_sub"], atol=ONE_LEVEL,
                               rtol=0)


def test_fps_changes_nothing_and_warns_once_per_model(pack, loaded3d, caplog):
    conds = encode(pack, loaded3d)
    model = run(pack, "DropletVideoModelLoader", model_folder=FOLDER, precision="fp32")[0]  # not yet warned
    with caplog.at_level(logging.WARNING):
        default = sample(pack, model, image_encode(pack, loaded3d, conds, fps=8))
        assert FPS_WARNING not in caplog.text  # the nodes' default says nothing
        fast = sample(pack, model, image_encode(pack, loaded3d, conds, fps=32))
        again = sample(pack, model, image_encode(pack, loaded3d, conds, fps=4))
    assert torch.equal(default["samples"], fast["samples"]) and torch.equal(default["samples"], again["samples"])
    assert caplog.text.count(FPS_WARNING) == 1 and "32" in caplog.text


def test_core_samplers_path_runs_without_an_fps_condition(loaded3d, loaded):  # noqa: F811
    """The MODEL's forward as core KSampler calls it: Droplet3D needs no fps, DropletVideo refuses."""
    def forward(model, fps):
        net = model.model.diffusion_model
        config = net.config
        x = torch.zeros(1, config.in_channels, 2, 8, 8)
        context = torch.zeros(1, 4, config.text_embed_dim)
        return net(x, torch.tensor([500.0]), context, fps=fps)

    assert forward(loaded3d[0], None).shape == (1, 16, 2, 8, 8)
    with pytest.raises(ValueError, match="DropletVideo needs its FPS condition"):
        forward(loaded[0], None)


def test_the_sampler_warns_when_the_text_length_is_not_the_models_reference(pack, loaded3d, caplog):
    cond = image_encode(pack, loaded3d, encode(pack, loaded3d, max_tokens=400))
    assert cond[0][0][0].shape[1] == 400
    with caplog.at_level(logging.WARNING):
        sample(pack, loaded3d[0], cond, steps=1)
    assert "Droplet3D's reference encodes 450" in caplog.text and "max_tokens to 450" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sample(pack, loaded3d[0], image_encode(pack, loaded3d, encode(pack, loaded3d)), steps=1)
    assert "reference encodes" not in caplog.text


def test_fps_sweep_refuses_droplet3d_by_name(pack, loaded3d):
    cond = image_encode(pack, loaded3d, encode(pack, loaded3d))
    with pytest.raises(ValueError, match="this MODEL is Droplet3D, which has no FPS condition"):
        run(pack, "DropletVideoFPSSweep", model=loaded3d[0], vae=loaded3d[1], positive=cond[0], negative=cond[1],
            latent=cond[2], fps_values="8,16", steps=1, cfg=6.0, seed=42, scheduler="ddim", layout="batch",
            vae_tiling=False)


def test_a_dropletvideo_loras_fps_keys_are_dropped_with_a_warning(pack, loaded3d, models_dir, caplog):
    net = loaded3d[0].model.diffusion_model
    factors = random_factors(net, seed=5, scale=0.05)
    inner, time_dim = net.config.inner_dim, net.config.time_embed_dim
    factors["fps_embedding.linear_1"] = (torch.randn(4, inner), torch.randn(time_dim, 4))
    write_peft(models_dir / "loras" / "droplet3d_fps_keys.safetensors", factors)
    with caplog.at_level(logging.WARNING):
        patched = run(pack, "DropletVideoLoraLoader", model=loaded3d[0], lora_name="droplet3d_fps_keys.safetensors",
                      strength=1.0)[0]
    assert "2 of its keys are for DropletVideo's FPS embedding" in caplog.text
    assert len(patched.patches) == len(factors) - 1  # every block layer, nothing for fps


def test_orbit_workflows_use_the_droplet3d_reference_tokens_and_size(info):  # noqa: F811
    for name in ("droplet3d_orbit", ORBIT):
        api = tool.ui_to_api(load(name), info)
        assert by_type(api, "DropletVideoTextEncode")[1]["max_tokens"] == DROPLET3D.max_sequence_length == 450
        encode_inputs = by_type(api, "DropletVideoImageEncode")[1]
        assert (encode_inputs["width"], encode_inputs["height"], encode_inputs["frames"]) == (
            DROPLET3D.width, DROPLET3D.height, DROPLET3D.frames)


def run_on_droplet3d(name, pack, info, tmp_path, **overrides):
    """The workflow on the tiny Droplet3D at SMALL: (API prompt, outputs, PNG frames SaveImage got)."""
    api = tool.make_small(tool.ui_to_api(load(name), info), SMALL)
    for node in api.values():
        node["inputs"].update({k: v for k, v in {"model_folder": FOLDER, **overrides}.items() if k in node["inputs"]})
    core = tool.demo_core_nodes(tmp_path / f"{name}.mp4", SMALL.width, SMALL.height)
    saved = {}

    def save_image(images, filename_prefix, **_):
        saved[filename_prefix] = images
        return (images,)

    core["SaveImage"] = save_image
    return api, tool.execute(api, pack, core), saved


def test_orbit_workflow_runs_and_saves_every_decoded_frame_as_png_per_run(pack, info, tiny3d, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        api, results, saved = run_on_droplet3d(ORBIT, pack, info, tmp_path)
    assert "reference encodes" not in caplog.text and FPS_WARNING not in caplog.text
    (prefix, frames), = saved.items()
    assert prefix.startswith("droplet3d/orbit_%year%-%month%-%day%_%hour%%minute%%second%/")
    # 5 frames -> 2 latent frames, an even count: decoded in pairs to 4 each
    assert frames.shape == (8, SMALL.height, SMALL.width, 3)
    # the video beside the run folders: core evaluates the time per save node, a second apart at times
    assert by_type(api, "SaveVideo")[1]["filename_prefix"] == "droplet3d/orbit"


def test_decoded_frame_count_rule_odd_latent_count_gives_the_requested_frames(pack, info, tiny3d, tmp_path):
    _, _, saved = run_on_droplet3d(ORBIT, pack, info, tmp_path, frames=9)
    assert next(iter(saved.values())).shape[0] == 9  # 3 latent frames


@pytest.mark.parametrize("name", ["droplet_image_to_video", "droplet_text_to_video", "droplet_start_and_end_frame", "droplet_long_video",
                                  "droplet_extend_in_segments", "droplet_low_vram"])
def test_bundled_dropletvideo_workflows_run_on_droplet3d(name, pack, info, tiny3d, tmp_path):
    # the long video past the table; the segments as test_workflows runs them (an overlap that fits)
    overrides = {"droplet_long_video": {"frames": 169}, "droplet_extend_in_segments": {"frames": 9, "overlap": 5}}.get(name, {})
    api, results, _ = run_on_droplet3d(name, pack, info, tmp_path, **overrides)
    saved = results[by_type(api, "SaveVideo")[0]][0]
    assert torch.isfinite(saved[0]).all() and saved[0].shape[0] > 0


def test_fps_sweep_workflow_is_refused_on_droplet3d(pack, info, tiny3d, tmp_path):
    with pytest.raises(ValueError, match="DropletVideo FPS Sweep: this MODEL is Droplet3D"):
        run_on_droplet3d("droplet_fps_sweep", pack, info, tmp_path)


def test_every_node_class_and_workflow_is_in_the_droplet3d_table(pack):
    page = (ROOT / "docs" / "droplet3d.md").read_text()
    display = importlib.import_module(pack.__name__).NODE_DISPLAY_NAME_MAPPINGS
    rows = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ")}
    assert {name.split(" (")[0] for name in display.values()} <= rows
    assert {f"`{path.name}`" for path in (ROOT / "example_workflows").glob("*.json")} <= rows


def test_the_split_loaders_load_droplet3d_parts_as_the_folder_loader(pack, models_dir, tiny3d, loaded3d):
    """The released folder's transformer/, vae/ and text_encoder/ linked into the split loaders'
    folders: the kind is read from the files, and each part equals the folder loader's."""
    for folder, part, name in (("diffusion_models", "transformer", "tiny3d-transformer"), ("vae", "vae", "tiny3d-vae"),
                               ("text_encoders", "text_encoder", "tiny3d-t5")):
        link = models_dir / folder / name
        if not link.is_symlink():
            link.symlink_to(tiny3d / part)
    model = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny3d-transformer", precision="fp32")[0]
    vae = run(pack, "DropletVideoVAELoader", vae_name="tiny3d-vae", precision="fp32")[0]
    assert model.model.droplet_config.kind.name == DROPLET3D.name
    # the latent scale is the Droplet3D VAE's (vae/ beside the linked transformer), not a fallback
    assert model.model.latent_format.scale_factor == vae.scaling_factor == loaded3d[1].scaling_factor
    for split, full in ((model.model, loaded3d[0].model), (vae.patcher.model, loaded3d[1].patcher.model)):
        a, b = split.state_dict(), full.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
