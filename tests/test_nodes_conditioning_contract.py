"""Core's conditioning contract on the DropletVideo MODEL: concat_mask is 1 where frames are
generated (as core's WAN/Hunyuan nodes store it; on a real ComfyUI, core's WanImageToVideo builds
the pack's mask and gives its video); the preview map travels in the LATENT; the MODEL's sampling
settings and the sampler's DDIM come from one scheduler config."""

import importlib
import os
import sys

import pytest
import torch
from PIL import Image

from droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG, make_scheduler
from node_fixtures import (GOLDENS, as_image, conds, conditioned, core_nodes_module, image_cond, loaded,  # noqa: F401
                           run, scale_of)

SAMPLING = dict(steps=3, cfg=6.0, seed=42, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)


@pytest.fixture(scope="module")
def i2v(pack, loaded, conds):
    start = as_image(Image.open(GOLDENS / "start.png"))
    return conditioned(pack, conds, image_cond(pack, loaded[1], start=start, frames=9))


def sampled(pack, loaded, positive, negative, latent):
    return run(pack, "DropletVideoSampler", model=loaded[0], positive=positive, negative=negative, latent=latent,
               **SAMPLING)[0]["samples"]


def with_mask(conditioning, mask):
    return [[embeds, {**options, "concat_mask": mask}] for embeds, options in conditioning]


def test_the_stored_mask_is_one_where_frames_are_generated(i2v):
    positive, negative, latent = i2v
    for options in (positive[0][1], negative[0][1]):
        mask = options["concat_mask"]
        assert mask.shape == (1, 1, *latent["samples"].shape[2:])
        assert torch.equal(mask[:, :, 0], torch.zeros_like(mask[:, :, 0]))  # the start frame is given
        assert torch.equal(mask[:, :, 1:], torch.ones_like(mask[:, :, 1:]))  # the others are generated
    assert "droplet_rgb_projection" not in positive[0][1] and "droplet_rgb_projection" in latent


@pytest.fixture(scope="module")
def plain(pack, loaded, i2v):
    return sampled(pack, loaded, *i2v)


def test_the_stored_masks_meaning_decides_the_video(pack, loaded, i2v, plain):
    positive, negative, latent = i2v
    mask = positive[0][1]["concat_mask"]
    inverted = sampled(pack, loaded, with_mask(positive, 1 - mask), with_mask(negative, 1 - mask), latent)
    assert not torch.allclose(plain, inverted, atol=1e-3)


def core_wan_mask(latent, positive, negative, monkeypatch):
    """The concat_mask core's WanImageToVideo (comfy_extras/nodes_wan.py) stores for a start image
    and a latent of this size."""
    monkeypatch.setitem(sys.modules, "nodes", core_nodes_module())  # nodes_wan imports core's `nodes`
    wan = importlib.import_module("comfy_extras.nodes_wan")
    frames, height, width = latent["samples"].shape[2:]
    encoder = type("CoreVae", (), {"encode": staticmethod(lambda image: torch.zeros(1, 16, frames, height, width))})
    out = wan.WanImageToVideo.execute(positive, negative, encoder(), width=width * 8, height=height * 8,
                                      length=(frames - 1) * 4 + 1, batch_size=1, start_image=torch.zeros(1, 64, 64, 3))
    return out[0][0][1]["concat_mask"]


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="core's WanImageToVideo needs a real ComfyUI: set "
                    "COMFYUI_PATH")
def test_core_wan_image_to_video_stores_the_packs_mask_and_gives_its_video(pack, loaded, i2v, plain, monkeypatch):
    positive, negative, latent = i2v
    mask = core_wan_mask(latent, positive, negative, monkeypatch)
    assert torch.equal(mask, positive[0][1]["concat_mask"]) and torch.equal(mask, negative[0][1]["concat_mask"])
    core_built = sampled(pack, loaded, with_mask(positive, mask), with_mask(negative, mask), latent)
    assert torch.equal(core_built, plain)


def test_a_several_channel_mask_counts_by_its_mean(loaded, i2v):
    model, options = loaded[0].model, i2v[0][0][1]
    noise = torch.zeros(1, 16, *i2v[2]["samples"].shape[2:])
    one = model.concat_cond(noise=noise, device=noise.device, concat_latent_image=options["concat_latent_image"],
                            concat_mask=options["concat_mask"])
    four = model.concat_cond(noise=noise, device=noise.device, concat_latent_image=options["concat_latent_image"],
                             concat_mask=options["concat_mask"].repeat(1, 4, 1, 1, 1))
    assert torch.equal(one, four)
    assert torch.equal(one[:, :1], (1 - options["concat_mask"]) * model.latent_format.scale_factor)


def comfy_alphas_cumprod(model) -> torch.Tensor:
    sigmas = model.model_sampling.sigmas.double()
    return 1 / (1 + sigmas ** 2)


@pytest.mark.parametrize("changes", [{}, {"beta_end": 0.02, "rescale_betas_zero_snr": False},
                                     {"beta_schedule": "linear", "beta_end": 0.02}])
def test_model_sampling_and_the_samplers_ddim_share_one_scheduler_config(pack, models_dir, loaded, changes):
    native = importlib.import_module(f"{pack.__name__}.nodes.native.loading")
    config = {**COGVIDEOX_SCHEDULER_CONFIG, **changes}
    model = native.load_native_model(models_dir / "DropletVideo" / "tiny" / "transformer", torch.float32,
                                     scale_of(pack, loaded[1].scaling_factor), scheduler_config=config).model
    assert model.scheduler_config == config
    ddim = make_scheduler(model.scheduler_config).alphas_cumprod.double()
    # ComfyUI keeps a tiny last alpha-bar (4.9e-8) where zero-SNR diffusers has 0
    torch.testing.assert_close(comfy_alphas_cumprod(model)[:-1], ddim[:-1], rtol=1e-5, atol=1e-7)


def test_a_scheduler_config_the_model_cannot_sample_is_refused(pack, models_dir, loaded):
    native = importlib.import_module(f"{pack.__name__}.nodes.native.loading")
    with pytest.raises(ValueError, match="prediction_type 'epsilon'.*v-prediction.*scheduler_config.json"):
        native.load_native_model(models_dir / "DropletVideo" / "tiny" / "transformer", torch.float32,
                                 scale_of(pack, loaded[1].scaling_factor),
                                 scheduler_config={**COGVIDEOX_SCHEDULER_CONFIG, "prediction_type": "epsilon"})
