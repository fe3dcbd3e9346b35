"""The latent scale: which VAE scaling_factor the transformer's latents are scaled by, and who says so.

The transformer works on the VAE's latents x scaling_factor (the reference: the conditioning
latents, its mask channel and the sampled latents; the decode divides again). LATENT and
CONDITIONING hold the latents unscaled, as ComfyUI keeps them, so the factor only matters where
they enter and leave the model. The VAE the latents come from or go to decides it
(docs/latent_scale.md):
- a pack VAE records its config's factor under SCALE in the conditioning (Image Encode, Extend,
  Empty Conditioning) and in VAE Encode's LATENT; the DropletVideo samplers scale by it and
  record the factor they sampled at in their LATENT; VAE Decode converts a LATENT recorded at
  another factor than its VAE's;
- core Load VAE's VAE carries no config: where nothing is recorded the MODEL's factor applies,
  which its loader read from the VAE config beside the transformer, or else a fallback, and
  logged;
- core samplers scale by the MODEL's factor alone: the model refuses a conditioning recorded
  at another (native/model.py), rather than sample a wrong video.
Nothing here changes a MODEL or VAE: the factor travels with the latents.
"""

import logging
import os
from pathlib import Path
from typing import NamedTuple, Optional

from ..droplet_core.configs import VaeConfig, config_from_dict, read_json
from .core_vae import is_core_vae

SCALE = "droplet_latent_scale"  # a conditioning option and a LATENT key
logger = logging.getLogger(__name__)
_logged = set()


def log_once(message: str) -> None:
    """Log a latent-scale decision the first time it is made (the same graph runs again and again)."""
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


class ModelScale(NamedTuple):
    """The MODEL's latent scale and where its loader found it, in words for the log."""

    factor: float
    source: str
    fallback: bool = False


def vae_config_scale(config_file: Path) -> ModelScale:
    factor = config_from_dict(VaeConfig, read_json(config_file), str(config_file)).scaling_factor
    return ModelScale(factor, f"{config_file}")


def transformer_scale(transformer_path: Path) -> ModelScale:
    """The latent scale of a transformer loaded on its own: the `vae/config.json` beside it, as in
    the release folder (DropletVideo-V1.0-weights/transformer next to vae/; also through a link to
    that folder), or else the config the VAE Loader falls back on for a VAE file without one."""
    path = Path(transformer_path)
    for folder in dict.fromkeys(place.parent for place in (*_link_chain(path), path.resolve())):
        config_file = folder / "vae" / "config.json"
        if config_file.is_file():
            return ModelScale(vae_config_scale(config_file).factor,
                              f"{config_file}, the VAE config beside the transformer")
    return ModelScale(VaeConfig().scaling_factor,
                      f"CogVideoX-2B's VAE config (the VAE Loader's fallback for a VAE file without a config), as no "
                      f"vae/config.json is beside {path}; 5B-class CogVideoX VAEs say 0.7", fallback=True)


def _link_chain(path: Path):
    """`path`, then each place its links point to in turn (the first with a vae/ beside it wins)."""
    seen = [path]
    while seen[-1].is_symlink() and len(seen) < 40:
        seen.append(seen[-1].parent / os.readlink(seen[-1]))
    return seen


def vae_scale(vae) -> Optional[float]:
    """A pack VAE's config factor; None for core's VAE, which carries no config."""
    return None if is_core_vae(vae) else vae.scaling_factor


def recorded(values: dict) -> Optional[float]:
    """The factor a conditioning's options or a LATENT records, if any."""
    return values.get(SCALE)


def sampling_scale(node: str, latent_format, conditioning_options: dict, latent: dict) -> float:
    """The factor a DropletVideo sampler scales by: the one its conditioning or latent records
    (the VAE they were encoded with), else the MODEL's. Two VAEs of different factors are refused."""
    from_conditioning, from_latent = recorded(conditioning_options), recorded(latent)
    if from_conditioning is not None and from_latent is not None and from_conditioning != from_latent:
        raise ValueError(f"{node}: the conditioning was encoded with a VAE whose scaling_factor is "
                         f"{from_conditioning}, the latent with one whose scaling_factor is {from_latent}; the video "
                         f"would be wrong for either. Encode both with the same VAE (connect one VAE loader to both "
                         f"nodes).")
    scale = from_conditioning if from_conditioning is not None else from_latent
    model_scale = latent_format.scale_factor
    if scale is None:
        log_once(f"{node}: no VAE scaling_factor travels with the conditioning or the latent (core Load VAE's VAE "
                 f"carries no config, or no VAE was connected): latents are scaled by the MODEL's {model_scale} "
                 f"(from {latent_format.source}).")
        return model_scale
    if scale != model_scale:
        log_once(f"{node}: the VAE's config says scaling_factor {scale}, the MODEL's latent scale is {model_scale} "
                 f"(from {latent_format.source}): sampling with the VAE's {scale}, as the reference does with it.")
    return scale


def check_core_sampler(latent_format, conditioning_scale: Optional[float]) -> None:
    """Core samplers scale the sampled latents by the MODEL's factor: a conditioning encoded at
    another would make a wrong video, so it is refused."""
    model_scale = latent_format.scale_factor
    if conditioning_scale is not None and conditioning_scale != model_scale:
        raise ValueError(
            f"KSampler (or another core sampler): the conditioning was encoded with a VAE whose scaling_factor is "
            f"{conditioning_scale}, but the MODEL scales latents by {model_scale} (from {latent_format.source}), "
            f"and core samplers use the MODEL's; the video would be wrong. Use the DropletVideo Sampler, which "
            f"samples with the VAE's factor, or give the transformer that VAE's config: put the VAE folder as "
            f"vae/ beside the transformer folder (the release layout) or load both with DropletVideo Model Loader.")
    if conditioning_scale is None and latent_format.fallback:
        log_once(f"KSampler (or another core sampler): the MODEL's latent scale {model_scale} comes from "
                 f"{latent_format.source}, and the conditioning names no VAE's: if the VAE's config.json says "
                 f"another scaling_factor, the video is wrong. Connect the VAE to the conditioning node (Empty "
                 f"Conditioning has a vae input), or put vae/config.json beside the transformer.")


def decode_scale(node: str, latent: dict, vae_factor: float) -> float:
    """The factor a LATENT's samples are scaled back by before a pack VAE decodes them: the one it
    was sampled or encoded at, where recorded (so a LATENT sampled at the MODEL's factor decodes
    as the engine would with this VAE), else the VAE's own."""
    scale = recorded(latent)
    if scale is None:
        return vae_factor
    if scale != vae_factor:
        log_once(f"{node}: the latent was sampled at scale {scale}, this VAE's config says scaling_factor {vae_factor}:"
                 f" decoded as the reference does with this VAE (latents x {scale} / {vae_factor}).")
    return scale
