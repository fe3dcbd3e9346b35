"""Node tests run against a ComfyUI stand-in (tests/comfy_stub), or against a real ComfyUI
checkout when COMFYUI_PATH points at one (run them with ComfyUI's Python environment).

The pack is imported as ComfyUI imports a custom node: its folder as a package, here named
ComfyUI-DropletVideo, so the nodes' relative imports of droplet_core work as they do there.
"""

import json
import os
import sys
from pathlib import Path

import pytest

# Equal-output tests compare runs bit for bit: MKL must not pick fewer threads on a busy machine
# (its default), which changes the order of its sums. Set before torch loads MKL; subprocesses inherit it.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

TESTS = Path(__file__).resolve().parent
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")

sys.path.insert(0, COMFYUI_PATH or str(TESTS / "comfy_stub"))
if COMFYUI_PATH:
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # what `main.py --cpu` sets
    # ComfyUI's nodes.py (KSampler, and what comfy_extras import), bound now: pytest's pythonpath puts
    # the pack's root first, where `import nodes` would find the pack's own nodes/ folder.
    import nodes  # noqa: F401

import run_workflow  # noqa: E402 (tools/, on pytest's pythonpath; after the comfy modules are findable)

PACK = run_workflow.load_pack(stub=False)  # the stand-in or COMFYUI_PATH is on sys.path already

# The model names the shipped workflows use; empty stand-ins make them valid combo choices.
SHIPPED_NAMES = [("DropletVideo", "DropletVideo-V1.0-weights", "model_index.json"),
                 ("DropletVideo", "Droplet3D-V1.0-weights", "model_index.json"),
                 ("diffusion_models", "DropletVideo-V1.0-transformer", "config.json"),
                 ("vae", "DropletVideo-V1.0-vae", "config.json"),
                 ("text_encoders", "DropletVideo-V1.0-t5", "config.json")]
SHIPPED_FILES = {"loras": "droplet_lora.safetensors"}


class PackRootIsAFolder:
    """Collects the pack's root as a plain folder, not as a test package.

    The root has an `__init__.py` (ComfyUI's entry point), so pytest would collect it as a
    package and import that file before the first test. In a clone named as the README says
    (ComfyUI-DropletVideo, not a Python name), the import runs without a parent package and its
    relative import fails: every test errors. Registered as a plugin because a conftest's
    collection hooks never see the folder above it.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if path == TESTS.parent:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(PackRootIsAFolder(), "droplet-pack-root-is-a-folder")


@pytest.fixture(scope="session")
def pack():
    return PACK


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """ComfyUI's models folder with the tiny checkpoint at DropletVideo/tiny, its parts in the
    split loaders' folders (tiny-transformer, tiny-vae, tiny-t5) and the shipped names."""
    import folder_paths
    from droplet_core.tiny import ensure_tiny_checkpoint

    root = Path(tmp_path_factory.mktemp("models")) if COMFYUI_PATH else Path(folder_paths.models_dir)
    if COMFYUI_PATH:  # never write into the ComfyUI checkout
        for name in {*(folder for folder, _, _ in SHIPPED_NAMES), *SHIPPED_FILES}:
            folder_paths.add_model_folder_path(name, str(root / name))
    tiny = ensure_tiny_checkpoint(root / "DropletVideo" / "tiny")
    links = {"diffusion_models/tiny-transformer": tiny / "transformer", "vae/tiny-vae": tiny / "vae",
             "text_encoders/t5-without-tokenizer": tiny / "text_encoder",
             "text_encoders/tiny-t5/tokenizer": tiny / "tokenizer"}
    for file in (tiny / "text_encoder").iterdir():
        links[f"text_encoders/tiny-t5/{file.name}"] = file
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if not (root / name).is_symlink():
            (root / name).symlink_to(target)
    for folder, name, marker in SHIPPED_NAMES:
        (root / folder / name).mkdir(parents=True, exist_ok=True)
        (root / folder / name / marker).write_text(json.dumps({}))
    for folder, name in SHIPPED_FILES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).touch()
    return root
