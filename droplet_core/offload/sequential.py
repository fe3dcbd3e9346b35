"""Sequential offload: each layer's weights visit the device only for its own forward.

Forward pre/post hooks on every module that owns tensors put device copies in place and
park them again (parked_tensors.py). Modules named in `groups` move as a whole instead: T5's
blocks read `relative_attention_bias.weight.device` before calling that layer, so a T5 block
must arrive in one piece. The slowest mode and the leanest: VRAM holds one layer plus activations.
"""

from typing import Iterable, List

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .parked_tensors import ParkedTensors


class SequentialOffload:
    """The installed hooks; `remove()` takes them off and parks every weight again (a forward
    that raised midway leaves its layer's device copy in place)."""

    def __init__(self, handles: List[RemovableHandle], parked: List[ParkedTensors]):
        self.handles, self.parked = handles, parked

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for parked in self.parked:
            parked.park()


def attach_sequential_offload(root: nn.Module, device, groups: Iterable[nn.Module] = ()) -> SequentialOffload:
    device = torch.device(device)
    pin = device.type == "cuda"
    handles, all_parked, grouped = [], [], set()
    for group in groups:
        all_parked.append(ParkedTensors(group, recurse=True, pin=pin))
        handles += _hook(group, all_parked[-1], device)
        grouped.update(id(m) for m in group.modules())
    for module in root.modules():
        if id(module) in grouped:
            continue
        parked = ParkedTensors(module, recurse=False, pin=pin)
        if parked:
            all_parked.append(parked)
            handles += _hook(module, parked, device)
    return SequentialOffload(handles, all_parked)


def _hook(module: nn.Module, parked: ParkedTensors, device: torch.device) -> List[RemovableHandle]:
    def before(_module, _args):
        parked.install(parked.fetch(device, non_blocking=True))

    def after(_module, _args, _output):
        parked.park()

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
