"""Where the weights are: ComfyUI model folders, listed and resolved with folder_paths.

The full release folder (DropletVideo-V1.0-weights/, with model_index.json) goes in
ComfyUI/models/DropletVideo/, registered here as the model folder "DropletVideo". The split
loaders read components from ComfyUI's own folders: diffusion_models, vae, text_encoders.
"""

import os
from pathlib import Path
from typing import List

import folder_paths

DROPLET_FOLDER = "DropletVideo"
WEIGHT_SUFFIXES = (".safetensors", ".sft")
MAX_DEPTH = 3  # how deep under a model folder to look for component folders

folder_paths.add_model_folder_path(DROPLET_FOLDER, os.path.join(folder_paths.models_dir, DROPLET_FOLDER))


def _roots(folder_name: str) -> List[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(folder_name)]
    except KeyError:  # a ComfyUI without this folder name
        return []


def folders_with(folder_name: str, marker: str) -> List[str]:
    """Sub-folders (relative, '/'-separated) of a model folder that hold a `marker` file."""
    found = set()
    for root in _roots(folder_name):
        for dirpath, subdirs, files in os.walk(root, followlinks=True):
            depth = len(Path(dirpath).relative_to(root).parts)
            if depth >= MAX_DEPTH:
                subdirs[:] = []
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            if depth > 0 and marker in files:
                found.add(Path(dirpath).relative_to(root).as_posix())
    return sorted(found)


def weight_files(folder_name: str) -> List[str]:
    return [f for f in folder_paths.get_filename_list(folder_name) if f.lower().endswith(WEIGHT_SUFFIXES)]


def components(folder_name: str) -> List[str]:
    """Choices for a split loader: single weight files, then folders with a config.json."""
    return weight_files(folder_name) + folders_with(folder_name, "config.json")


def resolve(folder_name: str, name: str, what: str) -> Path:
    """The file or folder `name` in any of the folder's paths; ValueError saying where to put it."""
    full = folder_paths.get_full_path(folder_name, name)
    if full is not None:
        return Path(full)
    for root in _roots(folder_name):
        if (root / name).is_dir():
            return root / name
    places = ", ".join(str(r) for r in _roots(folder_name)) or f"(no '{folder_name}' folder registered)"
    raise ValueError(f"{what} {name!r} was not found in ComfyUI's '{folder_name}' folders ({places}): put it "
                     f"there (see the workflow's note), or pick one from the list and refresh.")
