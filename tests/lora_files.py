"""LoRA files for the tests: random factors written in the two key styles the pack reads."""

import torch
from safetensors.torch import save_file


def random_factors(transformer, seed, rank=4, scale=0.3):
    """{Linear name: (down, up)} for every Linear in the transformer blocks."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(rank, m.in_features, generator=generator) * scale,
                   torch.randn(m.out_features, rank, generator=generator) * scale)
            for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("transformer_blocks.")}


def write_peft(path, factors, alpha=None, stray_key=False):
    """diffusers/peft keys, optional alpha, and (stray_key) one key that matches no layer."""
    tensors = {"transformer.not_a_layer.lora_A.weight": torch.zeros(1, 1)} if stray_key else {}
    for name, (down, up) in factors.items():
        tensors.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up})
        if alpha is not None:
            tensors[f"transformer.{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))


def write_kohya(path, factors, alpha):
    tensors = {}
    for name, (down, up) in factors.items():
        flat = "lora_unet_" + name.replace(".", "_")
        tensors.update({f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up,
                        f"{flat}.alpha": torch.tensor(alpha)})
    save_file(tensors, str(path))
