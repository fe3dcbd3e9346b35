"""Tiny random-weight FLUX.1 Kontext files laid out as the Droplet3D release's FLUX.1-Kontext-dev/
(diffusers: transformer/ in shards, vae/), and a LoRA in diffusers' key names as the release's
pytorch_lora_weights.safetensors, for tests and runs of core's Flux nodes.

Core detects Flux from tensor shapes with a fixed head size (128) and builds the VAE's encoder at
fixed sizes (128 channels, multipliers 1, 2, 4, 4): the transformer is tiny (one head, one block of
each kind, guidance embedding as in Kontext dev), the VAE has Flux's full size with random weights.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128,
               "num_attention_heads": 1, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
               "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
       "latent_channels": 16, "norm_num_groups": 32, "scaling_factor": 0.3611, "shift_factor": 0.1159,
       "use_quant_conv": False, "use_post_quant_conv": False}
SHARDS = 2
LORA_RANK = 4


def write_kontext_folder(root: Path, seed: int = 0) -> Path:
    """root/transformer/ (sharded, with its index) and root/vae/ in diffusers' layout; returns root."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TRANSFORMER).to(torch.bfloat16)
    write_shards(transformer.state_dict(), root / "transformer")
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel",
                                                                   **TRANSFORMER}))
    vae = AutoencoderKL(**VAE).to(torch.bfloat16)
    (root / "vae").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, root / "vae" / "diffusion_pytorch_model.safetensors")
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **VAE}))
    return root


def write_shards(state: dict, folder: Path) -> None:
    """diffusers' sharded layout: diffusion_pytorch_model-0000i-of-0000n.safetensors + the index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for index in range(SHARDS):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = keys[index::SHARDS]
        save_file({k: state[k].contiguous() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_kontext_lora(path: Path, seed: int = 1, scale: float = 0.05) -> dict:
    """A LoRA on every Linear of the tiny transformer, saved as diffusers' FluxKontextPipeline
    save_lora_weights names it (transformer.<module>.lora_A/lora_B.weight); returns the tensors."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**TRANSFORMER)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(LORA_RANK, module.in_features,
                                                                       generator=generator) * scale
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, LORA_RANK,
                                                                       generator=generator) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return tensors
