"""droplet_core/diffusers_internals.py: what the pack takes from diffusers beyond its public API
exists and behaves on the installed diffusers. On a diffusers that changed it, each check fails
with a message that names the change (the last tests simulate changes to show those messages).

Tiny modules built here (a few channels, 4 frames): seconds on a CPU.
"""

import importlib
import inspect
import sys

import diffusers
import pytest
import torch

from droplet_core import diffusers_internals as internals
from droplet_core.diffusers_internals import PARALLEL_MODULE, VAE_MODULE
from droplet_core.transformer import DropletVideoTransformer3DModel
from droplet_core.vae_memory import LeanResnetBlock3D, LeanSpatialNorm3D

CONV_CACHE_MODULES = ("CogVideoXEncoder3D", "CogVideoXDecoder3D", "CogVideoXSpatialNorm3D", "CogVideoXResnetBlock3D",
                      "CogVideoXCausalConv3d")
PLAN_FIELDS = {"ContextParallelInput": ("split_dim", "expected_dims"), "ContextParallelOutput": ("gather_dim",
                                                                                                 "expected_dims")}
LEAN_READS = {"CogVideoXSpatialNorm3D": ("norm_layer", "conv_y", "conv_b"),
              "CogVideoXResnetBlock3D": ("norm1", "conv1", "norm2", "conv2", "nonlinearity", "in_channels",
                                         "out_channels", "use_conv_shortcut")}


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"diffusers {diffusers.__version__} changed {what}, which droplet_core/diffusers_internals.py "
                    f"relies on: keep diffusers within requirements.txt's range, or adapt that module.", pytrace=False)


def diffusers_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"the module {name} (it is gone)")


def parameters(function) -> list:
    return list(inspect.signature(function).parameters)


def check_context_parallel_types() -> None:
    module = diffusers_module(PARALLEL_MODULE)
    for name, fields in PLAN_FIELDS.items():
        kind = getattr(module, name, None)
        require(kind is not None, f"{PARALLEL_MODULE}.{name} (it is gone)")
        require(all(f in parameters(kind) for f in fields), f"{name}'s fields {fields} (now {parameters(kind)})")
    for entry in DropletVideoTransformer3DModel._cp_plan.values():
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            for item in value if isinstance(value, list) else [value]:
                require(isinstance(item, tuple(getattr(module, n) for n in PLAN_FIELDS)),
                        f"the context-parallel plan types (the transformer's _cp_plan holds a {type(item).__name__})")


def check_conv_cache_protocol() -> None:
    module = diffusers_module(VAE_MODULE)
    for name in CONV_CACHE_MODULES:
        kind = getattr(module, name, None)
        require(kind is not None, f"{VAE_MODULE}.{name} (it is gone)")
        require("conv_cache" in parameters(kind.forward), f"{name}.forward's conv_cache argument (now "
                                                          f"{parameters(kind.forward)})")
    conv_kind = module.CogVideoXCausalConv3d
    pad = getattr(conv_kind, "fake_context_parallel_forward", None)
    require(pad is not None and parameters(pad)[1:] == ["inputs", "conv_cache"],
            "CogVideoXCausalConv3d.fake_context_parallel_forward(inputs, conv_cache)")
    torch.manual_seed(0)
    conv = conv_kind(2, 3, kernel_size=3)
    require(all(hasattr(conv, a) for a in ("pad_mode", "time_kernel_size", "conv")),
            "CogVideoXCausalConv3d's pad_mode, time_kernel_size, conv")
    first, second = torch.randn(1, 2, 4, 6, 6), torch.randn(1, 2, 4, 6, 6)
    with torch.no_grad():
        _, cache = internals.cached(conv, first, cache=None)
        expected, expected_cache = conv(second, conv_cache=cache)
        ours, our_cache = internals.causal_conv(conv, [second], cache)
    require(torch.equal(ours, expected) and torch.equal(our_cache, expected_cache),
            "how CogVideoXCausalConv3d pads with its cache (causal_conv no longer equals its forward)")


def check_class_swap() -> None:
    module = diffusers_module(VAE_MODULE)
    torch.manual_seed(0)
    norm = module.CogVideoXSpatialNorm3D(f_channels=4, zq_channels=4, groups=2)
    block = module.CogVideoXResnetBlock3D(in_channels=4, out_channels=8, temb_channels=0, groups=2, spatial_norm_dim=4)
    for layer in (norm, block):
        reads = LEAN_READS[type(layer).__name__]
        require(all(hasattr(layer, a) for a in reads), f"{type(layer).__name__}'s layers {reads}")
    f, zq = torch.randn(1, 4, 5, 6, 6), torch.randn(1, 4, 3, 3, 3)
    with torch.no_grad():
        expected = [norm(f, zq)[0], block(f, zq=zq)[0]]
        keys = [list(norm.state_dict()), list(block.state_dict())]
        for layer in (norm, block):
            internals.swap_classes(layer, {module.CogVideoXSpatialNorm3D: LeanSpatialNorm3D,
                                           module.CogVideoXResnetBlock3D: LeanResnetBlock3D})
        require(type(norm) is LeanSpatialNorm3D and type(block) is LeanResnetBlock3D, "the classes swap_classes swaps")
        require([list(norm.state_dict()), list(block.state_dict())] == keys, "the blocks' state-dict keys")
        swapped = [norm(f, zq)[0], block(f, zq=zq)[0]]
    for name, ours, theirs in zip(LEAN_READS, swapped, expected):
        require(torch.equal(ours, theirs), f"what {name}.forward computes (vae_memory's lean subclass differs)")


CHECKS = [check_context_parallel_types, check_conv_cache_protocol, check_class_swap]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_the_installed_diffusers_has_what_we_rely_on(check):
    check()


def fails_with(check, message: str) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"diffusers {diffusers.__version__} changed {message}"):
        check()


def test_a_gone_private_module_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, PARALLEL_MODULE, None)  # importing it now raises ImportError
    fails_with(check_context_parallel_types, f"the module {PARALLEL_MODULE}")
    with pytest.raises(ImportError, match=f"diffusers {diffusers.__version__} has no {PARALLEL_MODULE}."
                                          f"ContextParallelInput, which DropletVideo uses .*: install a diffusers "
                                          f"version within the range in the pack's requirements.txt"):
        internals.internal(PARALLEL_MODULE, "ContextParallelInput")


def test_a_changed_conv_cache_protocol_is_named(monkeypatch):
    module = importlib.import_module(VAE_MODULE)
    monkeypatch.setattr(module.CogVideoXEncoder3D, "forward", lambda self, sample, temb=None, cache=None: sample)
    fails_with(check_conv_cache_protocol, "CogVideoXEncoder3D.forward's conv_cache argument")
    monkeypatch.undo()
    monkeypatch.delattr(module.CogVideoXCausalConv3d, "fake_context_parallel_forward")
    fails_with(check_conv_cache_protocol, r"CogVideoXCausalConv3d.fake_context_parallel_forward\(inputs, conv_cache\)")


def test_a_changed_block_is_named(monkeypatch):
    module = importlib.import_module(VAE_MODULE)
    forward = module.CogVideoXSpatialNorm3D.forward
    monkeypatch.setattr(module.CogVideoXSpatialNorm3D, "forward",
                        lambda self, f, zq, conv_cache=None: (forward(self, f, zq, conv_cache)[0] * 2, None))
    fails_with(check_class_swap, "what CogVideoXSpatialNorm3D.forward computes")
