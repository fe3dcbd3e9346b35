"""The bundled workflows as ComfyUI's Templates browser finds them: one folder that core lists
without a start-up message and without listing a workflow twice, and a thumbnail for each.

The listing and its message are core's (`app/custom_node_manager.py`): the real-host test runs
core's own route when COMFYUI_PATH points at a ComfyUI; the folder test needs no ComfyUI.
"""

import asyncio
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACK = "ComfyUI-DropletVideo"  # the folder name the README's `git clone` gives
FOLDER = ROOT / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
# The folder names ComfyUI 0.8 and 0.33 look for in a pack, in their order. Core lists the
# workflows of every one that exists, and logs "consider renaming it to 'example_workflows'"
# for each other than the first.
CORE_FOLDER_NAMES = ("example_workflows", "example", "examples", "workflow", "workflows")


def jpeg_size(data: bytes) -> tuple:
    """(width, height) from a baseline or progressive JPEG's frame header."""
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    raise AssertionError("no frame header")


def test_the_workflows_are_in_one_real_folder_named_as_core_asks():
    present = [name for name in CORE_FOLDER_NAMES if os.path.lexists(ROOT / name)]
    assert present == ["example_workflows"], (
        f"{present}: core lists the workflows of each of these folders (a link counts) and logs a "
        "message for each one but example_workflows; keep the workflows in example_workflows/ only")
    # A link is a text file in a clone on Windows without symlink rights and in a zip.
    assert FOLDER.is_dir() and not FOLDER.is_symlink()
    assert WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.stem)
def test_every_workflow_has_its_thumbnail(workflow):
    thumbnail = workflow.with_suffix(".jpg")
    assert thumbnail.is_file(), (f"{thumbnail.name} is missing: the Templates browser shows a placeholder; "
                                 "make it with tools/workflow_thumbnails.py (docs/development.md)")
    width, height = jpeg_size(thumbnail.read_bytes())
    assert width == height >= 256, f"{thumbnail.name} is {width}x{height}: the card is a square"


def test_each_thumbnail_is_its_own_and_belongs_to_a_workflow():
    thumbnails = sorted(FOLDER.glob("*.jpg"))
    assert {t.stem for t in thumbnails} <= {w.stem for w in WORKFLOWS}, "a thumbnail without its workflow"
    digests = Counter(hashlib.sha256(t.read_bytes()).hexdigest() for t in thumbnails)
    assert max(digests.values(), default=1) == 1, "two workflows share one picture"


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="runs core's own template route")
def test_core_lists_each_workflow_once_without_a_message_and_serves_its_thumbnail(tmp_path, caplog, monkeypatch):
    import folder_paths
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    # ComfyUI 0.8 puts its comfy/ folder on sys.path, where `utils` is comfy/utils.py; core's
    # module imports the top-level utils package, which main.py has imported by then.
    monkeypatch.syspath_prepend(os.environ["COMFYUI_PATH"])
    from app.custom_node_manager import CustomNodeManager

    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / PACK).symlink_to(ROOT)  # as README's set-up (a clone) or a linked checkout
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(custom_nodes)], set()))
    routes, webapp = web.RouteTableDef(), web.Application()
    with caplog.at_level(logging.DEBUG):
        CustomNodeManager().add_routes(routes, webapp, [(PACK, str(custom_nodes / PACK))])
    messages = [r.getMessage() for r in caplog.records if "example_workflows" in r.getMessage()]
    webapp.add_routes(routes)

    async def fetch():
        async with TestClient(TestServer(webapp)) as client:
            listing = await (await client.get("/workflow_templates")).json()
            name = WORKFLOWS[0].stem  # the frontend's thumbnail address for a pack's template
            image = await client.get(f"/api/workflow_templates/{PACK}/{name}.jpg")
            return listing, image.status, image.content_type

    listing, status, content_type = asyncio.run(fetch())
    names = listing[PACK]
    assert [n for n, count in Counter(names).items() if count > 1] == [], json.dumps(listing)
    assert sorted(names) == [w.stem for w in WORKFLOWS]
    assert (status, content_type) == (200, "image/jpeg")
    assert messages == []  # core logs them at start-up (DEBUG on 0.8 and 0.33)
