"""One config object per component; fields match the released config.json files.

Unknown fields are refused (they would silently change nothing), missing fields that
decide tensor shapes are refused (the reference would silently build a wrong model).
Keys that start with "_" (`_diffusers_version`) are bookkeeping and ignored, but `_class_name`:
it names the model kind (model_kind.py), and a VAE's must agree with its block type names.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Tuple

from .model_kind import DROPLETVIDEO, ModelKind, kind_named, kind_of_class


@dataclass(frozen=True)
class TransformerConfig:
    """DropletVideoTransformer3DModel's constructor arguments (reference defaults), and the model kind."""

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: Optional[int] = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    text_embed_dim: int = 4096
    num_layers: int = 30
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    add_noise_in_inpaint_model: bool = False
    # Not a config.json field: "dropletvideo" or "droplet3d", from `_class_name` here and from the
    # weights in loading.py (model_kind.py); config_to_dict writes it back as `_class_name`.
    model_kind: str = DROPLETVIDEO.name

    DERIVED = ("model_kind",)
    REQUIRED = ("num_attention_heads", "attention_head_dim", "in_channels", "num_layers")
    # Fields newer diffusers versions write for CogVideoX; accepted only at these neutral values.
    NEUTRAL = {"patch_size_t": None, "ofs_embed_dim": None, "use_learned_positional_embeddings": False,
               "patch_bias": True}

    @property
    def kind(self) -> ModelKind:
        return kind_named(self.model_kind)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def noise_channels(self) -> int:
        """Channels of the latents the model denoises (the 17 inpaint channels come on top)."""
        return self.out_channels or self.in_channels

    @property
    def latent_frames(self) -> int:
        """Latent frames covered by the positional table (reference: (sample_frames-1)//4+1)."""
        return (self.sample_frames - 1) // self.temporal_compression_ratio + 1

    @property
    def max_video_frames(self) -> int:
        return (self.latent_frames - 1) * self.temporal_compression_ratio + 1


@dataclass(frozen=True)
class VaeConfig:
    """The CogVideoX causal 3D VAE's config (diffusers' AutoencoderKLCogVideoX fields)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Tuple[str, ...] = ("CogVideoXDownBlock3D",) * 4
    up_block_types: Tuple[str, ...] = ("CogVideoXUpBlock3D",) * 4
    block_out_channels: Tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: float = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: Optional[float] = None
    latents_mean: Optional[Tuple[float, ...]] = None
    latents_std: Optional[Tuple[float, ...]] = None
    force_upcast: float = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False

    DERIVED = ()
    REQUIRED = ("block_out_channels", "latent_channels")
    NEUTRAL = {"invert_scale_latents": False}  # written by newer diffusers

    def diffusers_kwargs(self) -> dict:
        """The references name their blocks DropletVideo* / Droplet3D*; diffusers knows them as CogVideoX*."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs["down_block_types"] = tuple(_cogvideox_block_name(n) for n in self.down_block_types)
        kwargs["up_block_types"] = tuple(_cogvideox_block_name(n) for n in self.up_block_types)
        return kwargs


def _cogvideox_block_name(name: str) -> str:
    return name.replace("DropletVideo", "CogVideoX").replace("Droplet3D", "CogVideoX")


def check_vae_block_names(values: dict, source: str) -> None:
    """A Droplet VAE class takes its own block names only, as each reference vae.py does."""
    kind = kind_of_class(values.get("_class_name"))
    if kind is None:
        return
    for key in ("down_block_types", "up_block_types"):
        foreign = [name for name in values.get(key) or () if not name.startswith(kind.vae_block_prefix)]
        if foreign:
            raise ValueError(f"{source}: {values['_class_name']} ({kind.label}) takes {kind.vae_block_prefix}* "
                             f"block types, but {key} holds {foreign[0]!r} (the reference vae.py refuses it). "
                             f"Use the config.json that came with these weights.")


def config_from_dict(cls, values: dict, source: str):
    """Builds `cls` from a config dict; `source` names the file in error messages."""
    known = {f.name for f in fields(cls)} - set(cls.DERIVED)
    for key, value in values.items():
        if key.startswith("_") or key in known:
            continue
        if key in cls.NEUTRAL and value == cls.NEUTRAL[key]:
            continue
        raise ValueError(
            f"{source}: unknown config field {key!r} = {value!r}. This is not a DropletVideo "
            f"{cls.__name__[:-6].lower()} config (or a variant we do not support); check the file.")
    missing = [name for name in cls.REQUIRED if name not in values]
    if missing:
        raise ValueError(f"{source}: config field {missing[0]!r} is missing; it decides the model's "
                         f"shape, so it must be written in the file (compare with the released config.json).")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in known}
    if cls is VaeConfig:
        check_vae_block_names(values, source)
    if "model_kind" in cls.DERIVED and kind_of_class(values.get("_class_name")) is not None:
        kwargs["model_kind"] = kind_of_class(values["_class_name"]).name
    return cls(**kwargs)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the released folder layout has it (see README, 'Models').")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-download it.") from error


def config_to_dict(config, class_name: Optional[str] = None) -> dict:
    """The config.json of `config`; a transformer's `_class_name` is its kind's class (the kind
    travels as that name), a VAE's must be given."""
    if class_name is None:
        class_name = config.kind.transformer_class
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in config.DERIVED}
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    return {"_class_name": class_name, **values}



# The released DropletVideo-5B transformer's shape (CogVideoX-5B class, 33-channel inpaint input),
# for memory planning and benchmarks without the weights.
RELEASE_TRANSFORMER = TransformerConfig(
    num_attention_heads=48, attention_head_dim=64, in_channels=33, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=42, sample_width=84, sample_height=48, sample_frames=85)
