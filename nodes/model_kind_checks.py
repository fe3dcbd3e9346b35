"""What the DropletVideo samplers check against the MODEL's kind (DropletVideo or Droplet3D), which
the conditioning and text nodes cannot see: the FPS condition and the prompt's token count."""

import logging

import torch

from .fps_condition import FPS_DEFAULT, model_reads_fps, warn_if_set
from .native.conditioning import FPS, fps_of, options

logger = logging.getLogger(__name__)


def condition_fps(base, positive, fps=None) -> float:
    """The FPS the loop carries: `fps` (the sweep's), else the conditioning's. A Droplet3D MODEL
    reads none (fps_condition.py): a conditioning without one is fine there."""
    if not model_reads_fps(base.droplet_config):
        value = fps if fps is not None else options(positive).get(FPS, FPS_DEFAULT)
        warn_if_set(base.diffusion_model, value)
        return value
    return fps if fps is not None else fps_of(positive, "positive")


def check_text_length(embeds: torch.Tensor, config) -> None:
    """Text Encode cannot see the MODEL: here the prompt's token count meets the model's reference."""
    tokens, kind = embeds.shape[1], config.kind
    if tokens != kind.max_sequence_length:
        logger.warning("the prompt is encoded to %d tokens; %s's reference encodes %d (inference.py's "
                       "max_sequence_length): set DropletVideo Text Encode's max_tokens to %d to match it.",
                       tokens, kind.label, kind.max_sequence_length, kind.max_sequence_length)
