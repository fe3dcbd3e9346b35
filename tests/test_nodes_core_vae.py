"""ComfyUI's own VAE (core Load VAE: comfy.sd.VAE) in the DropletVideo nodes.

The VAE file is the tiny checkpoint's vae/diffusion_pytorch_model.safetensors, unconverted: core's
CogVideoX VAE has diffusers' key names. Core builds that VAE at the release's widths (it reads only
the latent channels off the file), so the test builds core's class at the tiny model's widths; the
loading, the batching and the conventions are core's (real ComfyUI with COMFYUI_PATH, else the
stand-in's comfy.sd / comfy.ldm.cogvideo, which batch frames as core does). The run is measured
against the reference's goldens (docs/core_vae.md has the numbers).
"""

import json
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from droplet_core.conditioning import i2v_video_and_mask
from droplet_core.text import NEGATIVE_PROMPT
from droplet_core.tiny import VAE as TINY_VAE
from node_fixtures import GOLDENS, as_image, loaded, run  # noqa: F401

CASES = json.loads((GOLDENS / "cases.json").read_text())
MEASURED = ("i2v_fps8", "i2v_end_image", "i2v_wide_cfg1")
# Largest differences to the goldens measured on ComfyUI 0.33 (docs/core_vae.md), with headroom:
LATENT_BOUND = 0.05  # final latents (the model's space)
VIDEO_BOUND = 0.05  # decoded frames, 0..1


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
    import comfy.ldm.cogvideo.vae as cogvideo
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


@pytest.mark.parametrize("name", MEASURED)
def test_the_core_vae_path_stays_near_the_goldens(name, pack, loaded, core_vae):
    golden = load_file(str(GOLDENS / f"{name}.safetensors"))
    final, frames = core_vae_run(pack, loaded, core_vae, name)
    last = max((k for k in golden if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    assert frames.shape[1] == int(golden["frames"])
    latent_diff = (final.cpu() - golden[last]).abs().max().item()
    video_diff = (frames[:, :, ::8, ::8].cpu() - golden["video_sub"]).abs()
    print(f"{name}: final latents max |diff| {latent_diff:.2e}; video max |diff| {video_diff.max().item():.2e}, "
          f"mean {video_diff.mean().item():.2e}")
    assert latent_diff <= LATENT_BOUND and video_diff.max().item() <= VIDEO_BOUND


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


@pytest.mark.parametrize("node,inputs", [
    ("DropletVideoVAEDecode", dict(latent={"samples": torch.zeros(1, 16, 2, 8, 8)}, tiling=False,
                                   trim_to_frames=False)),
    ("DropletVideoVAEEncode", dict(image=torch.zeros(5, 64, 64, 3), tiling=False, seed=1)),
    ("DropletVideoImageEncode", dict(positive=[[torch.zeros(1, 4, 32), {}]], negative=[[torch.zeros(1, 4, 32), {}]],
                                     width=64, height=64, frames=5, fps=8, resize_mode="stretch",
                                     noise_augmentation=False, noise_aug_strength=0.0, noise_aug_seed=1,
                                     vae_tiling=False, start_image=torch.zeros(1, 64, 64, 3))),
])
def test_a_core_vae_is_refused_by_name_where_core_cannot_run_the_cogvideox_vae(node, inputs, pack, core_vae,
                                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy.ldm.cogvideo.vae", None)  # as on ComfyUI 0.8.0 (January 2026)
    with pytest.raises(ValueError, match="core cannot load the CogVideoX VAE.*DropletVideo VAE Loader"):
        run(pack, node, vae=core_vae, **inputs)
    monkeypatch.undo()
    other = type("VAE", (), {"first_stage_model": torch.nn.Identity()})()  # another model's core VAE
    with pytest.raises(ValueError, match="a Identity, not the CogVideoX VAE.*DropletVideo VAE Loader"):
        run(pack, node, vae=other, **inputs)


def test_the_vae_sockets_take_the_pack_s_vae_and_core_s(pack):
    for node in ("DropletVideoImageEncode", "DropletVideoVAEDecode", "DropletVideoVAEEncode"):
        assert pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]["vae"][0] == "DROPLET_VAE,VAE"
