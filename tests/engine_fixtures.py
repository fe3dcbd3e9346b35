"""Shared fixtures of the engine tests: the tiny checkpoint, built once per session."""

from pathlib import Path

import pytest
from PIL import Image

from droplet_core.tiny import ensure_tiny_checkpoint

GOLDENS = Path(__file__).parent / "goldens"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "DropletVideo-tiny")


@pytest.fixture(scope="session")
def start_image() -> Image.Image:
    return Image.open(GOLDENS / "start.png")


@pytest.fixture(scope="session")
def end_image() -> Image.Image:
    return Image.open(GOLDENS / "end.png")


@pytest.fixture(scope="session")
def tiny_droplet3d_ckpt(tmp_path_factory) -> Path:
    from droplet_core.tiny_droplet3d import ensure_tiny_droplet3d

    return ensure_tiny_droplet3d(tmp_path_factory.mktemp("tiny3d") / "Droplet3D-tiny")
