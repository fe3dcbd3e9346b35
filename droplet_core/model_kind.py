"""Which model a checkpoint is: DropletVideo-5B or Droplet3D-5B, read from its files.

Both are the same CogVideoX-class DiT and causal VAE; Droplet3D has no FPS embedding and its
reference runs at other defaults. The kind is never guessed from a folder name: the transformer
config's `_class_name` names it, the weights confirm it (DropletVideo's hold `fps_embedding.*`,
Droplet3D's do not), and where the class name is not one of ours the weights alone decide.
"""

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

logger = logging.getLogger(__name__)

FPS_WEIGHT_PREFIX = "fps_embedding."


@dataclass(frozen=True)
class ModelKind:
    """One released model: its class names and its reference inference.py's defaults."""

    name: str  # the value TransformerConfig.model_kind holds
    label: str  # how messages and docs call it
    transformer_class: str
    vae_class: str
    vae_block_prefix: str  # the reference vae.py's block type names start with it
    pipeline_class: str
    has_fps: bool  # the FPS condition exists (fps_proj / fps_embedding)
    width: int
    height: int
    frames: int
    max_sequence_length: int
    playback_fps: float  # the frame rate inference.py writes the video at


DROPLETVIDEO = ModelKind(
    name="dropletvideo", label="DropletVideo", transformer_class="DropletVideoTransformer3DModel",
    vae_class="AutoencoderKLDropletVideo", vae_block_prefix="DropletVideo",
    pipeline_class="DropletVideo_Pipeline_Inpaint", has_fps=True, width=672, height=384, frames=85,
    max_sequence_length=400, playback_fps=8)
DROPLET3D = ModelKind(
    name="droplet3d", label="Droplet3D", transformer_class="Droplet3DTransformer3DModel",
    vae_class="AutoencoderKLDroplet3D", vae_block_prefix="Droplet3D",
    pipeline_class="Droplet3D_Pipeline_Inpaint", has_fps=False, width=512, height=512, frames=85,
    max_sequence_length=450, playback_fps=8)
KINDS = {kind.name: kind for kind in (DROPLETVIDEO, DROPLET3D)}


def kind_named(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; known: {', '.join(KINDS)}.")
    return KINDS[name]


def kind_of_class(class_name: Optional[str]) -> Optional[ModelKind]:
    """The kind a transformer, VAE or pipeline class name belongs to, None if it is not ours."""
    for kind in KINDS.values():
        if class_name in (kind.transformer_class, kind.vae_class, kind.pipeline_class):
            return kind
    return None


def kind_of_weights(keys: Iterable[str]) -> ModelKind:
    """DropletVideo when the transformer's tensors include the FPS embedding, else Droplet3D."""
    return DROPLETVIDEO if any(key.startswith(FPS_WEIGHT_PREFIX) for key in keys) else DROPLET3D


def detect_transformer_kind(class_name: Optional[str], keys: Iterable[str], source: str) -> ModelKind:
    """The kind of a transformer from its config's `_class_name` and its tensor names (prefixes
    stripped); a config naming one model over the other's weights is refused by name."""
    by_weights = kind_of_weights(keys)
    by_class = kind_of_class(class_name)
    if by_class is None:
        logger.info("%s: config class %s is not a Droplet class; the weights %s fps_embedding tensors, "
                    "so this is a %s transformer.", source, class_name or "(none)",
                    "hold" if by_weights.has_fps else "have no", by_weights.label)
        return by_weights
    if by_class != by_weights:
        found = ("hold fps_embedding.* tensors (a DropletVideo transformer)" if by_weights.has_fps
                 else "have no fps_embedding.* tensors (a Droplet3D transformer, or an incomplete file)")
        raise ValueError(f"{source}: the config names {class_name} ({by_class.label}) but the weights {found}. "
                         f"Use the config.json that came with these weights.")
    return by_class
