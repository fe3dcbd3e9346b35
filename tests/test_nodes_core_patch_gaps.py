"""Core model patches that read the model's fields: RenormCFG reads the diffusion model's
in_channels; ModelNoiseScale rebuilds the model sampling with set_parameters, which only flow
models have, so it fails on DropletVideo exactly as on core's own CogVideoX (docs/core_vae.md,
"Core patches")."""

import importlib
import os
import sys

import pytest
import torch

from node_fixtures import core_nodes_module, loaded  # noqa: F401

REAL = bool(os.environ.get("COMFYUI_PATH"))
NEEDS_CORE = pytest.mark.skipif(not REAL, reason="core's RenormCFG / ModelNoiseScale need a real ComfyUI: set "
                                "COMFYUI_PATH")
# core's CogVideoX-I2V, at a small width (rotary positions: its sin-cos table needs the real width)
CORE_COGVIDEOX = {"image_model": "cogvideox", "in_channels": 32, "num_attention_heads": 2, "attention_head_dim": 32,
                  "time_embed_dim": 32, "text_embed_dim": 32, "num_layers": 1,
                  "use_rotary_positional_embeddings": True, "use_learned_positional_embeddings": False}


def test_the_diffusion_model_has_the_input_channels_core_patches_read(loaded):
    diffusion_model = loaded[0].model.diffusion_model
    assert diffusion_model.in_channels == diffusion_model.config.in_channels == 33


@NEEDS_CORE
def test_renorm_cfg_guides_every_channel_of_the_prediction(loaded):
    from comfy_extras.nodes_lumina2 import RenormCFG

    patched = RenormCFG.execute(loaded[0], cfg_trunc=100.0, renorm_cfg=0.0)[0]
    guide = patched.model_options["sampler_cfg_function"]
    generator = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(1, 16, 2, 4, 4, generator=generator) for _ in range(3))
    out = guide({"cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": 6.0, "timestep": torch.tensor([10.0]),
                 "input": x})
    torch.testing.assert_close(out, x - (uncond + 6.0 * (cond - uncond)))


def core_cogvideox_patcher():
    import comfy.model_patcher
    import comfy.supported_models

    model = comfy.supported_models.CogVideoX_I2V(dict(CORE_COGVIDEOX)).get_model({})
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@NEEDS_CORE
def test_model_noise_scale_fails_on_droplet_video_as_on_cores_own_cogvideox(loaded, monkeypatch):
    import comfy.supported_models

    monkeypatch.setitem(sys.modules, "nodes", core_nodes_module())  # the module imports core's `nodes`
    advanced = importlib.import_module("comfy_extras.nodes_model_advanced")
    if not hasattr(advanced, "ModelNoiseScale") or not hasattr(comfy.supported_models, "CogVideoX_I2V"):
        pytest.skip("this ComfyUI has no ModelNoiseScale or no CogVideoX model of its own")
    for patcher in (core_cogvideox_patcher(), loaded[0]):
        with pytest.raises(AttributeError, match="'ModelSampling' object has no attribute 'set_parameters'"):
            advanced.ModelNoiseScale().patch(patcher, 8.0)
