"""The view-alignment stage of droplet3d_orbit.json on core's own Flux loaders (real ComfyUI only:
set COMFYUI_PATH): the release's diffusers-layout FLUX.1-Kontext-dev/ turned into the files core
reads with the command docs/droplet3d.md gives, and the release's diffusers-named LoRA read by
core's LoRA key map, every key. The weights are a tiny random Flux (flux_files.py)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flux_files import TRANSFORMER, write_kontext_folder, write_kontext_lora

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="core's Flux loaders need a real ComfyUI")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "droplet3d.md"


def merge_command() -> list:
    """The docs' shard-merging command, as argv (its two path arguments are replaced by the caller)."""
    line = next(line for line in DOCS.read_text().splitlines() if line.startswith("python -c ") and "save_file" in line)
    return shlex.split(line)


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    root = write_kontext_folder(tmp_path_factory.mktemp("release") / "FLUX.1-Kontext-dev")
    merged = root.parent / "flux1-kontext-dev.safetensors"
    argv = merge_command()
    subprocess.run([sys.executable, *argv[1:-2], str(root / "transformer"), str(merged)], check=True)
    return root, merged


def test_the_docs_merge_command_gives_one_file_with_every_shard_tensor(kontext):
    root, merged = kontext
    shards = sorted((root / "transformer").glob("*.safetensors"))
    assert len(shards) == 2
    expected = {k: v for shard in shards for k, v in load_file(shard).items()}
    got = load_file(merged)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def core_flux(path):
    """Core's Flux from the tiny file; ComfyUI 0.8.0's Flux detection fixes 24 heads whatever the
    width (0.33 derives them from it), so a tiny random Flux cannot be built there: skipped."""
    import comfy.sd

    try:
        return comfy.sd.load_diffusion_model(str(path))
    except ValueError as error:
        if "must be divisible by num_heads" not in str(error):
            raise
        pytest.skip(f"this ComfyUI's Flux detection fixes the head count ({error}): no tiny Flux here")


def test_core_detects_the_merged_diffusers_transformer_as_flux_kontext(kontext):
    import comfy.model_base

    model = core_flux(kontext[1])
    assert isinstance(model.model, comfy.model_base.Flux)
    config = model.model.model_config.unet_config
    assert (config["depth"], config["depth_single_blocks"], config["hidden_size"], config["guidance_embed"]) == (
        TRANSFORMER["num_layers"], TRANSFORMER["num_single_layers"], 128, True)


def test_core_reads_the_release_vae_file_of_the_diffusers_folder(kontext):
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(kontext[0] / "vae" / "diffusion_pytorch_model.safetensors")))
    assert vae.latent_channels == 16
    latent = vae.encode(torch.rand(1, 64, 64, 3))
    assert latent.shape == (1, 16, 8, 8)


def test_core_lora_key_map_takes_every_key_of_a_diffusers_flux_lora(kontext, tmp_path):
    import comfy.lora

    model = core_flux(kontext[1])
    tensors = write_kontext_lora(tmp_path / "pytorch_lora_weights.safetensors")
    patches = comfy.lora.load_lora(tensors, comfy.lora.model_lora_keys_unet(model.model, {}), log_missing=False)
    loaded = set().union(*(getattr(adapter, "loaded_keys", ()) for adapter in patches.values()))
    assert loaded == set(tensors), sorted(set(tensors) - loaded)[:5]
    # q, k and v of a block land on core's one fused qkv weight, each in its own slice
    fused = [key for key in patches if re.search(r"double_blocks\.0\.img_attn\.qkv\.weight", str(key))]
    assert len(fused) == 3
