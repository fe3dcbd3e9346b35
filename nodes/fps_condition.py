"""The FPS condition on the two models this pack runs.

DropletVideo's transformer embeds an FPS value at every step; Droplet3D's has no FPS embedding.
Image Encode, Empty Conditioning and Extend cannot see the MODEL, so they attach their fps either
way, and the MODEL decides at sampling: DropletVideo reads it (and refuses a conditioning without
one), Droplet3D ignores it and warns once per loaded model when it is not the nodes' default, since
whoever changed it expected an effect.
"""

import logging

logger = logging.getLogger(__name__)

FPS_DEFAULT = 8  # the fps the conditioning nodes start with
IGNORED_ON_DROPLET3D = (f"Droplet3D has no FPS condition: a Droplet3D MODEL ignores this value (and warns once when "
                        f"it is not {FPS_DEFAULT}).")
WARNED = "_droplet_fps_warned"  # set on the diffusion model once its warning is out


def model_reads_fps(config) -> bool:
    return config.kind.has_fps


def fps_for_transformer(diffusion_model, fps):
    """What the transformer gets for the conditioning's fps (a tensor, or None when there is none):
    DropletVideo's first value as float [1], None for Droplet3D (after the warning, once)."""
    if model_reads_fps(diffusion_model.config):
        if fps is None:
            raise ValueError("DropletVideo needs its FPS condition: build the conditioning with DropletVideo Image "
                             "Encode (start/end frame) or DropletVideo Empty Conditioning (text-to-video); they set "
                             "fps on positive and negative.")
        return fps.reshape(-1)[:1].float()
    warn_if_set(diffusion_model, None if fps is None else float(fps.reshape(-1)[0]))
    return None


def warn_if_set(diffusion_model, value) -> None:
    """Droplet3D: one warning per loaded model when the conditioning's fps is not the default."""
    if value is None or value == FPS_DEFAULT or getattr(diffusion_model, WARNED, False):
        return
    setattr(diffusion_model, WARNED, True)
    logger.warning("the conditioning's fps is %g, but this MODEL is %s, which has no FPS condition: the value is "
                   "ignored (the video is the same at any fps). Leave fps at %d to silence this.",
                   value, diffusion_model.config.kind.label, FPS_DEFAULT)
