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


def train_lora_layout(base_model, seed, rank=4, scale=0.05):
    """Tensors named as core Train LoRA saves them for a ComfyUI model (`base_model` is the MODEL's
    model, whose state dict starts with diffusion_model.): every layer that ComfyUI patches gets
    lora_up / lora_down (flattened input) / alpha for a weight of 2 or more dimensions, `.diff` for
    a 1-D weight (norms) and `.diff_b` for its bias."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in base_model.named_modules():
        if not hasattr(module, "weight_function") or module.weight is None:
            continue
        shape = module.weight.shape
        if len(shape) >= 2:
            tensors[f"{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=generator) * scale
            tensors[f"{name}.lora_down.weight"] = torch.randn(rank, shape[1:].numel(), generator=generator) * scale
            tensors[f"{name}.alpha"] = torch.tensor(1.0)
        else:
            tensors[f"{name}.diff"] = torch.randn(shape, generator=generator) * scale
        if getattr(module, "bias", None) is not None:
            tensors[f"{name}.diff_b"] = torch.randn(module.bias.shape, generator=generator) * scale
    return tensors
