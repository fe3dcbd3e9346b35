"""Stand-in for comfy.conds: CONDRegular, CONDNoiseShape, CONDCrossAttn (ComfyUI 0.33)."""

import comfy.utils


class CONDRegular:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, **kwargs):
        return self._copy_with(comfy.utils.repeat_to_batch_size(self.cond, batch_size))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape and self.cond.device == other.cond.device

    def concat(self, others):
        import torch
        return torch.cat([self.cond] + [x.cond for x in others])

    def size(self):
        return list(self.cond.size())


class CONDNoiseShape(CONDRegular):
    pass


class CONDCrossAttn(CONDRegular):
    pass
