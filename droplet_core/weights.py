"""Reading weight files: safetensors only, one tensor at a time, straight into the target dtype."""

import json
import struct
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch
from safetensors import safe_open

FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = ("convert it once with `python -c \"import torch, safetensors.torch as s; "
                "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"` on a machine you trust")


def refuse_pickle(path: Path) -> None:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle file; DropletVideo loads weights from .safetensors only "
                         f"(pickle can run code when loaded): {CONVERT_HINT}.")


def read_header(path: Path) -> dict:
    """The safetensors JSON header; a clear error when the file is not safetensors."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if size <= 1 or size > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (corrupt or truncated header); re-download it.")
        raw = handle.read(size)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: corrupt safetensors header ({error}); re-download the file.") from error
    check_complete(path, header, 8 + size)
    return header


def check_complete(path: Path, header: dict, data_start: int) -> None:
    """A file cut short after an intact header (an interrupted download) is refused by name,
    instead of safetensors' "incomplete metadata, file not fully covered"."""
    ends = [entry["data_offsets"][1] for entry in header.values()
            if isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    expected = data_start + max(ends, default=0)
    actual = Path(path).stat().st_size
    if actual < expected:
        raise ValueError(f"{path} is incomplete: {actual:,} bytes, its header says {expected:,}. The download "
                         f"was cut short: re-download the file.")


def metadata(path: Path) -> Dict[str, str]:
    return read_header(path).get("__metadata__") or {}


def tensor_shapes(path: Path) -> Dict[str, tuple]:
    return {k: tuple(v["shape"]) for k, v in read_header(path).items() if k != "__metadata__"}


def weight_files(folder: Path, index_name: Optional[str] = None) -> list:
    """The safetensors files of a component folder (sharded through an index, or single)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: expected the released layout "
                                f"(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/).")
    index = folder / index_name if index_name else None
    if index is None:
        candidates = sorted(folder.glob("*.safetensors.index.json"))
        index = candidates[0] if candidates else None
    if index is not None and index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: shard {missing[0]} named in {index.name} is missing; re-download it.")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        refuse_pickle(folder / pickles[0])
    raise FileNotFoundError(f"{folder} holds no .safetensors weights.")


def load_tensors(files: Iterable[Path], dtype: Optional[torch.dtype] = None,
                 strip_prefixes: Iterable[str] = (), keep_float8: bool = False) -> Dict[str, torch.Tensor]:
    """All tensors of `files`, each cast to `dtype` as it is read (peak RAM ~ one copy);
    with `keep_float8`, float8 tensors are left as stored (fp8.py dequantizes or keeps them)."""
    tensors = {}
    for path in files:
        read_header(path)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if dtype is not None and tensor.is_floating_point() and not (keep_float8 and tensor.dtype in FLOAT8):
                    tensor = tensor.to(dtype)
                tensors[_strip(key, strip_prefixes)] = tensor
    return tensors


def _strip(key: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
