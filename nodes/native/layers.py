"""Give a module built from torch.nn layers ComfyUI's layer classes (`operations`).

diffusers' CogVideoX blocks build torch.nn.Linear/LayerNorm/Conv2d; ComfyUI casts, offloads and
patches weights through its own subclasses of those (comfy.ops). The transformer is built on the
meta device and each layer is replaced by the `operations` class of the same shape, constructed
by its own __init__ (so quantized operations set up what they need). Weights arrive later, by
assignment (loading.py).
"""

import torch

LAYER_TYPES = ("Linear", "LayerNorm", "Conv2d")


def _replacement(layer: torch.nn.Module, operations, device, dtype):
    kinds = {"device": device, "dtype": dtype}
    if type(layer) is torch.nn.Linear:
        return operations.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, **kinds)
    if type(layer) is torch.nn.LayerNorm:
        return operations.LayerNorm(layer.normalized_shape, eps=layer.eps,
                                    elementwise_affine=layer.elementwise_affine, bias=layer.bias is not None, **kinds)
    if type(layer) is torch.nn.Conv2d:
        return operations.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                 padding=layer.padding, bias=layer.bias is not None, **kinds)
    return None


def use_operations(module: torch.nn.Module, operations, device=None, dtype=None) -> int:
    """Replaces every plain Linear, LayerNorm and Conv2d under `module` in place; returns how many.
    Any other layer that holds weights is an error: ComfyUI could not manage it."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            new = _replacement(child, operations, device, dtype)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
            elif not any(True for _ in child.children()) and any(True for _ in child.parameters(recurse=False)):
                if not isinstance(child, tuple(getattr(operations, kind) for kind in LAYER_TYPES)):
                    raise TypeError(f"{type(child).__name__} at {name} holds weights but has no ComfyUI operation.")
    return replaced
