"""What the node tests share: running a node, the tiny model loaded through the nodes, the
engine on the nodes' device, the prompt's embeddings, the i2v settings they compare at."""

import importlib.util
import os
import sys
from pathlib import Path

import comfy.model_management
import numpy as np
import pytest
import torch
from PIL import Image

from droplet_core.pipeline import Request, load_pipeline
from droplet_core.text import NEGATIVE_PROMPT

GOLDENS = Path(__file__).parent / "goldens"
PROMPT = "A panda plays a guitar in a bamboo forest."
SIZE = dict(width=128, height=128, frames=13)
SAMPLING = dict(fps=8, steps=3, cfg=6.0, seed=42, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)
ATOL = 1e-5  # LATENT is unscaled (ComfyUI's convention): x / scale * scale rounds at ~1e-6


def run(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def as_image(pil: Image.Image) -> torch.Tensor:
    """What LoadImage gives: [1, H, W, 3] float32 in 0..1."""
    return torch.from_numpy(np.array(pil.convert("RGB"))).float()[None] / 255


def image_cond(pack, vae, start=None, end=None, **size):
    """The image-conditioning node and its inputs (sample() runs it on the prompt's conds)."""
    return "DropletVideoImageEncode", dict(vae=vae, **{**SIZE, **size}, resize_mode="stretch",
                                           noise_augmentation=False, noise_aug_strength=0.0563, noise_aug_seed=42,
                                           vae_tiling=False, start_image=start, end_image=end)


def empty_cond(vae=None, **size):
    return "DropletVideoEmptyConditioning", {**SIZE, **size, "vae": vae}


def conditioned(pack, conds, cond, fps=8):
    """(positive, negative, latent) of the conditioning node `cond` on the prompt's conds."""
    node, inputs = cond
    return run(pack, node, positive=conds[0], negative=conds[1], fps=fps, **inputs)


def sample(pack, model, conds, cond, latent=None, **sampling):
    """DropletVideoSampler's LATENT at SAMPLING (overridden by `sampling`); `latent` replaces the
    conditioning node's empty one (video-to-video)."""
    settings = {**SAMPLING, **sampling}
    positive, negative, empty = conditioned(pack, conds, cond, settings.pop("fps"))
    return run(pack, "DropletVideoSampler", model=model, positive=positive, negative=negative,
               latent=empty if latent is None else latent, **settings)[0]


def load_partially(monkeypatch, model) -> None:
    """The sampler's load_models_gpu loads `model` ComfyUI's lowvram way, on a third of its size."""
    budget, device = model.model_size() // 3, model.load_device
    monkeypatch.setattr(comfy.model_management, "load_models_gpu",
                        lambda models, *args, **kwargs: models[0].patch_model(device, lowvram_model_memory=budget))


def sample_and_decode(pack, loaded, conds, cond, **sampling):
    latent = sample(pack, loaded[0], conds, cond, **sampling)
    return run(pack, "DropletVideoVAEDecode", vae=loaded[1], latent=latent, tiling=False, trim_to_frames=False)[0]


def engine_result(engine, **request):
    """The engine's Result for the same settings as the graph (SIZE, SAMPLING)."""
    settings = {**SIZE, "fps": 8, "steps": 3, "seed": 42, **request}
    return engine.generate(Request(prompt=PROMPT, **settings))


def engine_frames(engine, **request):
    return engine_result(engine, **request).frames


def engine_latent(engine, **request):
    """The engine's final latents as the sampler's LATENT ([B, C, F, H, W], unscaled)."""
    return engine_result(engine, **request).latents.permute(0, 2, 1, 3, 4) / engine.vae.config.scaling_factor


def scale_of(pack, factor: float):
    """The latent scale a test's own native model is built with (the VAE config's factor it read)."""
    return importlib.import_module(f"{pack.__name__}.nodes.latent_scale").ModelScale(factor, "the test's VAE config")


def core_nodes_module():
    """ComfyUI's nodes.py (the name `nodes` is this pack's folder on the tests' path)."""
    if "comfyui_core_nodes" not in sys.modules:
        spec = importlib.util.spec_from_file_location("comfyui_core_nodes",
                                                      Path(os.environ["COMFYUI_PATH"]) / "nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_core_nodes"] = module
        spec.loader.exec_module(module)
    return sys.modules["comfyui_core_nodes"]


def load_engine(models_dir):
    """The engine on the nodes' device (a CUDA generator draws other numbers than a CPU one)."""
    return load_pipeline(models_dir / "DropletVideo" / "tiny", device=comfy.model_management.get_torch_device())


@pytest.fixture(scope="session")
def loaded(pack, models_dir):
    return run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")


@pytest.fixture(scope="session")
def engine(models_dir):
    return load_engine(models_dir)


@pytest.fixture(scope="session")
def conds(pack, loaded):
    return run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT,
               append_quality_suffix=True, max_tokens=400)


@pytest.fixture(scope="session")
def start_image() -> Image.Image:
    return Image.open(GOLDENS / "start.png")
