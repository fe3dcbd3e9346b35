"""A module's weights kept in offload memory, with device copies put in their place on demand.

Inference never writes weights, so sending a module back costs nothing: the offload tensors
are put back in place and the device copies are dropped. Copies are always real copies
(`copy=True`), so the same code runs, and is tested, when the device is the CPU itself.
"""

from typing import List

import torch
from torch import nn


class ParkedTensors:
    def __init__(self, module: nn.Module, recurse: bool = True, pin: bool = False):
        owners = module.modules() if recurse else [module]
        self.slots = [(owner, name, kind) for owner in owners for kind in ("_parameters", "_buffers")
                      for name, tensor in getattr(owner, kind).items() if tensor is not None]
        self.stored = [_offload_copy(getattr(owner, kind)[name], pin) for owner, name, kind in self.slots]
        self.park()

    def __bool__(self) -> bool:
        return bool(self.slots)

    def fetch(self, device: torch.device, non_blocking: bool = False) -> List[torch.Tensor]:
        """Device copies of the weights (not yet in place)."""
        return [t.to(device, non_blocking=non_blocking, copy=True) for t in self.stored]

    def install(self, tensors: List[torch.Tensor]) -> None:
        for (owner, name, kind), tensor in zip(self.slots, tensors):
            if kind == "_parameters":
                owner._parameters[name].data = tensor
            else:
                owner._buffers[name] = tensor

    def park(self) -> None:
        self.install(self.stored)


def _offload_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    # Pinned host memory lets the host-to-device copy run asynchronously on a side stream.
    return tensor.pin_memory() if pin else tensor
