"""What the pack takes from diffusers beyond its public API, all in this module.

diffusers does not promise these across versions. requirements.txt's range keeps users on the
versions where tests/test_diffusers_internals.py checks them; on a diffusers that changed one,
that test fails naming what changed, and the imports below fail with the version and the fix.

1. The context-parallel plan types, from the private module `diffusers.models._modeling_parallel`:
   ContextParallelInput / ContextParallelOutput, which the transformer's `_cp_plan` is made of.
2. The CogVideoX VAE's causal-conv cache protocol: its encoder, decoder, spatial norms, resnet
   blocks and causal convs take `conv_cache=` and return (output, new cache) (`cached`); a causal
   conv pads its input with the cache (`fake_context_parallel_forward`), keeps its last
   `time_kernel_size - 1` padded frames as the next cache unless `pad_mode` is "replicate", and
   convolves with `.conv` (`causal_conv`).
3. The class swap of a loaded VAE's blocks (`swap_classes`): vae_memory's lean subclasses of
   CogVideoXSpatialNorm3D and CogVideoXResnetBlock3D replace `forward` only, reading the blocks'
   own layers (norm_layer, conv_y, conv_b; norm1, conv1, norm2, conv2, conv_shortcut).
"""

import importlib

import diffusers
import torch

VAE_MODULE = "diffusers.models.autoencoders.autoencoder_kl_cogvideox"
PARALLEL_MODULE = "diffusers.models._modeling_parallel"


def internal(module: str, name: str):
    """`name` from diffusers' `module`, or an ImportError naming the diffusers version and the fix."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"diffusers {diffusers.__version__} has no {module}.{name}, which DropletVideo uses "
                          f"(droplet_core/diffusers_internals.py): install a diffusers version within the range in "
                          f"the pack's requirements.txt.") from error


ContextParallelInput = internal(PARALLEL_MODULE, "ContextParallelInput")
ContextParallelOutput = internal(PARALLEL_MODULE, "ContextParallelOutput")
CogVideoXSpatialNorm3D = internal(VAE_MODULE, "CogVideoXSpatialNorm3D")
CogVideoXResnetBlock3D = internal(VAE_MODULE, "CogVideoXResnetBlock3D")


def cached(module: torch.nn.Module, *inputs, cache):
    """(output, new cache) of a CogVideoX VAE module called with the previous frames' cache."""
    return module(*inputs, conv_cache=cache)


def causal_conv(conv, holder: list, cache):
    """(output, new cache) of CogVideoXCausalConv3d.forward on `holder.pop()`: the caller keeps no
    reference, so the unpadded input is freed once padded, before the convolution allocates its output."""
    padded = conv.fake_context_parallel_forward(holder.pop(), cache)
    new_cache = None if conv.pad_mode == "replicate" else padded[:, :, -conv.time_kernel_size + 1:].clone()
    return conv.conv(padded), new_cache


def swap_classes(root: torch.nn.Module, replacements: dict) -> None:
    """Each submodule whose type is exactly a key becomes the value: a subclass that replaces
    `forward` only, so parameters, buffers and state-dict keys stay."""
    for module in root.modules():
        replacement = replacements.get(type(module))
        if replacement is not None:
            assert issubclass(replacement, type(module)), (replacement, type(module))
            module.__class__ = replacement
