"""What the loader nodes share: precisions, building the DROPLET_* objects, a last-result cache."""

from pathlib import Path

from ..droplet_core.loading import load_transformer, load_vae
from ..droplet_core.pipeline import DTYPES
from ..droplet_core.text import load_text_encoder
from .components import DropletModel, DropletTextEncoder, DropletVae, make_patcher

PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_TOOLTIP = ("Weight and compute dtype. bf16 is the reference's; fp16 may overflow in T5; "
                     "fp32 is exact but doubles memory.")
_LAST = {}  # kind -> (key, loaded objects)


def cached(kind: str, key: tuple, build):
    """The last result for this kind of loader if its key (path, mtime, precision) is unchanged;
    otherwise drops it first (freeing its memory) and builds anew."""
    hit = _LAST.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    _LAST.pop(kind, None)
    value = build()
    _LAST[kind] = (key, value)
    return value


def path_key(path: Path, precision: str) -> tuple:
    path = Path(path).resolve()
    return str(path), path.stat().st_mtime_ns, precision


def dtype_for(precision: str):
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    return DTYPES[precision]


def build_model(transformer_path: Path, scheduler_config: dict, precision: str) -> DropletModel:
    transformer = load_transformer(transformer_path, dtype_for(precision))
    return DropletModel(make_patcher(transformer), scheduler_config, str(transformer_path))


def build_vae(path: Path, precision: str) -> DropletVae:
    return DropletVae(make_patcher(load_vae(path, dtype_for(precision))), str(path))


def build_text_encoder(encoder_folder: Path, tokenizer_folder: Path, precision: str) -> DropletTextEncoder:
    encoder = load_text_encoder(encoder_folder, tokenizer_folder, dtype_for(precision))
    return DropletTextEncoder(make_patcher(encoder.model), encoder.tokenizer, str(encoder_folder))

