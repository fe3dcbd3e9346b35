"""ComfyUI's own VAE (core Load VAE: comfy.sd.VAE) in the DropletVideo nodes.

The VAE file is the tiny checkpoint's vae/diffusion_pytorch_model.safetensors, unconverted: core's
CogVideoX VAE has diffusers' key names. Core builds that VAE at the release's widths (it reads only
the latent channels off the file), so the test builds core's class at the tiny model's widths; the
loading, the batching and the conventions are core's (real ComfyUI with COMFYUI_PATH, else the
stand-in's comfy.sd / comfy.ldm.cogvideo, which batch frames as core does). The run is measured
against the reference's goldens (docs/core_vae.md has the numbers).
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from droplet_core.conditioning import i2v_video_and_mask
from droplet_core.text import NEGATIVE_PROMPT
from droplet_core.tiny import VAE as TINY_VAE
from node_fixtures import GOLDENS, as_image, loaded, run  # noqa: F401

CASES = json.loads((GOLDENS / "cases.json").read_text())
# Differences to the goldens measured on ComfyUI 0.33 (docs/core_vae.md) x 1.5: final latents (the
# model's space) max |diff|, decoded frames (0..1) max and mean |diff|. 9 frames is core's worst
# case (a lone first frame in its first encode batch, after which it keeps no causal cache).
BOUNDS = {"i2v_fps8": (1.5, 0.3, 0.03), "i2v_end_image": (1.7, 0.27, 0.032), "i2v_wide_cfg1": (0.11, 0.12, 0.0063)}


@pytest.fixture(scope="module")
def core_vae_file(models_dir):
    """The VAE as a single file for core's Load VAE (models/vae/), weights as the release stores them."""
    path = models_dir / "vae" / "droplet_core_vae.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file(load_file(str(models_dir / "DropletVideo" / "tiny" / "vae" / "diffusion_pytorch_model.safetensors")),
              str(path))
    return path


@pytest.fixture(scope="module")
def core_vae(core_vae_file):
    """comfy.sd.VAE (what Load VAE returns) on that file, core's CogVideoX VAE at the tiny widths."""
    cogvideo = pytest.importorskip("comfy.ldm.cogvideo.vae", reason="this ComfyUI's core has no CogVideoX VAE")
    import comfy.sd

    original = cogvideo.AutoencoderKLCogVideoX

    class TinyWidths(original):
        def __init__(self, **kwargs):
            super().__init__(block_out_channels=TINY_VAE.block_out_channels, layers_per_block=TINY_VAE.layers_per_block,
                             groups=TINY_VAE.norm_num_groups, **kwargs)

    cogvideo.AutoencoderKLCogVideoX = TinyWidths
    try:
        return comfy.sd.VAE(sd=load_file(str(core_vae_file)))
    finally:
        cogvideo.AutoencoderKLCogVideoX = original


def test_core_loads_the_release_vae_file_without_conversion(core_vae, core_vae_file):
    stored, model = load_file(str(core_vae_file)), core_vae.first_stage_model.state_dict()
    assert model.keys() == stored.keys()
    for key, tensor in stored.items():
        assert torch.equal(model[key].cpu(), tensor), key


def core_vae_run(pack, loaded, core_vae, name):
    """The golden case through the nodes with the core VAE in Image Encode and VAE Decode:
    (final latents [F, C, h, w] in the model's space, frames [3, F, H, W])."""
    case = CASES[name]
    positive, negative = run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], prompt=case["prompt"],
                             negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=case.get("suffix", True),
                             max_tokens=case["max_sequence_length"])
    end = as_image(Image.open(GOLDENS / "end.png")) if case.get("end") else None
    positive, negative, empty = run(pack, "DropletVideoImageEncode", positive=positive, negative=negative,
                                    vae=core_vae, width=case["width"], height=case["height"], frames=case["frames"],
                                    fps=case["fps"], resize_mode="stretch", noise_augmentation=False,
                                    noise_aug_strength=0.0563, noise_aug_seed=case["seed"], vae_tiling=False,
                                    start_image=as_image(Image.open(GOLDENS / "start.png")), end_image=end)
    latent = run(pack, "DropletVideoSampler", model=loaded[0], positive=positive, negative=negative, latent=empty,
                 steps=case["steps"], cfg=case["guidance_scale"], seed=case["seed"], scheduler="ddim",
                 use_dynamic_cfg=False, denoise=1.0)[0]
    frames = run(pack, "DropletVideoVAEDecode", vae=core_vae, latent=latent, tiling=False, trim_to_frames=False)[0]
    final = loaded[0].model.process_latent_in(latent["samples"])[0].movedim(0, 1)
    return final, frames.permute(3, 0, 1, 2)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_the_core_vae_path_stays_near_the_goldens(name, pack, loaded, core_vae):
    golden = load_file(str(GOLDENS / f"{name}.safetensors"))
    final, frames = core_vae_run(pack, loaded, core_vae, name)
    last = max((k for k in golden if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    assert frames.shape[1] == int(golden["frames"])
    latent_diff = (final.cpu() - golden[last]).abs().max().item()
    video_diff = (frames[:, :, ::8, ::8].cpu() - golden["video_sub"]).abs()
    print(f"{name}: final latents max |diff| {latent_diff:.2e}; video max |diff| {video_diff.max().item():.2e}, "
          f"mean {video_diff.mean().item():.2e}")
    assert all(value <= bound for value, bound in zip((latent_diff, video_diff.max(), video_diff.mean()), BOUNDS[name]))


def test_core_vae_encode_gives_cores_mean_and_a_preview_map(pack, loaded, core_vae):
    video = i2v_video_and_mask(9, 128, 128, Image.open(GOLDENS / "start.png"))[0][0].permute(1, 2, 3, 0)
    latent = run(pack, "DropletVideoVAEEncode", vae=core_vae, image=video, tiling=False, seed=1)[0]
    with torch.no_grad():
        expected = core_vae.encode(video)
    torch.testing.assert_close(latent["samples"], expected.to(latent["samples"].device), atol=1e-6, rtol=0)
    ours = run(pack, "DropletVideoVAEEncode", vae=loaded[1], image=video, tiling=False, seed=1)[0]
    assert ours["samples"].shape == latent["samples"].shape
    assert latent["droplet_rgb_projection"][0].shape == (3, 16)
    empty = run(pack, "DropletVideoEmptyConditioning", positive=[[torch.zeros(1, 4, 32), {}]],
                negative=[[torch.zeros(1, 4, 32), {}]], width=128, height=128, frames=9, fps=8, vae=core_vae)[2]
    assert empty["droplet_rgb_projection"][0].shape == (3, 16)


VAE_NODES = [
    ("DropletVideoVAEDecode", dict(latent={"samples": torch.zeros(1, 16, 2, 8, 8)}, tiling=False,
                                   trim_to_frames=False)),
    ("DropletVideoVAEEncode", dict(image=torch.zeros(5, 64, 64, 3), tiling=False, seed=1)),
    ("DropletVideoImageEncode", dict(positive=[[torch.zeros(1, 4, 32), {}]], negative=[[torch.zeros(1, 4, 32), {}]],
                                     width=64, height=64, frames=5, fps=8, resize_mode="stretch",
                                     noise_augmentation=False, noise_aug_strength=0.0, noise_aug_seed=1,
                                     vae_tiling=False, start_image=torch.zeros(1, 64, 64, 3))),
]


def another_core_vae():
    """What Load VAE gives for another model's VAE file (its first_stage_model is not CogVideoX's)."""
    return type("VAE", (), {"first_stage_model": torch.nn.Identity()})()


@pytest.mark.parametrize("node,inputs", VAE_NODES)
def test_a_core_vae_is_refused_by_name_where_core_cannot_run_the_cogvideox_vae(node, inputs, pack, monkeypatch):
    if importlib.util.find_spec("comfy.ldm.cogvideo") is not None:  # else this ComfyUI is one (0.8.0, Jan 2026)
        monkeypatch.setitem(sys.modules, "comfy.ldm.cogvideo.vae", None)
    with pytest.raises(ValueError, match="core cannot load the CogVideoX VAE.*DropletVideo VAE Loader"):
        run(pack, node, vae=another_core_vae(), **inputs)


@pytest.mark.parametrize("node,inputs", VAE_NODES)
def test_another_models_core_vae_is_refused_by_name(node, inputs, pack):
    pytest.importorskip("comfy.ldm.cogvideo.vae", reason="this ComfyUI's core has no CogVideoX VAE")
    with pytest.raises(ValueError, match="a Identity, not the CogVideoX VAE.*DropletVideo VAE Loader"):
        run(pack, node, vae=another_core_vae(), **inputs)


def test_the_vae_sockets_take_the_pack_s_vae_and_core_s(pack):
    for node in ("DropletVideoImageEncode", "DropletVideoVAEDecode", "DropletVideoVAEEncode"):
        assert pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["vae"][0] == "DROPLET_VAE,VAE"


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="compares the stand-in with a real ComfyUI's VAE")
def test_the_stand_in_vae_batches_frames_as_core_does(core_vae):
    """Keeps tests/comfy_stub/comfy/ldm/cogvideo/vae.py honest: equal to core's on 1 to 21 frames."""
    path = Path(__file__).parent / "comfy_stub" / "comfy" / "ldm" / "cogvideo" / "vae.py"
    spec = importlib.util.spec_from_file_location("stand_in_cogvideo_vae", path)
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    ours = stand_in.AutoencoderKLCogVideoX(block_out_channels=TINY_VAE.block_out_channels,
                                           layers_per_block=TINY_VAE.layers_per_block, groups=TINY_VAE.norm_num_groups)
    ours.load_state_dict(core_vae.first_stage_model.state_dict())
    core, generator = core_vae.first_stage_model.float().cpu(), torch.Generator().manual_seed(0)
    for frames in (1, 5, 9, 13, 21):
        pixels = torch.rand(1, 3, frames, 32, 32, generator=generator) * 2 - 1
        latents = torch.randn(1, 16, (frames - 1) // 4 + 1, 4, 4, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(pixels), core.encode(pixels), atol=1e-5, rtol=0)
            torch.testing.assert_close(ours.decode(latents), core.decode(latents), atol=1e-5, rtol=0)


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="the stand-in's VAE has no tiling")
def test_core_vae_tiling_goes_through_cores_tiled_encode_and_decode(pack, core_vae):
    with torch.inference_mode():  # as ComfyUI runs nodes (core's tiled decode writes in place)
        frames = run(pack, "DropletVideoVAEDecode", vae=core_vae, latent={"samples": torch.randn(1, 16, 3, 16, 16)},
                     tiling=True, trim_to_frames=False)[0]
        latent = run(pack, "DropletVideoVAEEncode", vae=core_vae, image=frames, tiling=True, seed=1)[0]
    assert frames.shape == (9, 128, 128, 3)
    assert latent["samples"].shape == (1, 16, 3, 16, 16)
