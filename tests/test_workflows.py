"""The shipped workflows: UI format as the frontend saves it, node types that exist, widget
values that fit the inputs, links between matching types; their API conversion and the
headless demo."""

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
import run_workflow as tool
from lora_files import random_factors, write_peft
from node_fixtures import loaded  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"}




@pytest.fixture(scope="module")
def info(pack, models_dir):
    """object_info for the pack (with the shipped model names present) and the core nodes."""
    return tool.object_info(pack)


def check_value(where, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if kind == "control_after_generate":
        assert value in CONTROL_VALUES, where
    elif kind == "IMAGEUPLOAD":
        assert value == "image", where
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert kind == "FLOAT" or isinstance(value, int), where
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    else:
        choices = kind if isinstance(kind, (list, tuple)) else options.get("options", [])
        choices = [c["key"] if isinstance(c, dict) else c for c in choices]
        if not any(options.get(key) for key in tool.UPLOAD_OPTIONS):  # upload lists depend on the input folder
            assert value in choices, f"{where}: {value!r} not in {choices}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid(path, info):
    workflow = json.loads(path.read_text())
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= workflow.keys()
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])
    assert sorted(n["order"] for n in nodes.values()) == list(range(len(nodes)))
    notes = [n for n in nodes.values() if n["type"] in ("Note", "MarkdownNote")]
    assert notes and "ComfyUI/models/" in notes[0]["widgets_values"][0]

    for node in nodes.values():
        where = f"{path.stem} node {node['id']} {node['type']}"
        assert NODE_KEYS <= node.keys(), where
        assert node["type"] in info, f"{where}: unknown node type"
        definition = info[node["type"]]
        if node["type"] not in ("Note", "MarkdownNote"):
            assert node["properties"]["Node name for S&R"] == node["type"], where
        values = node["widgets_values"]
        slots = tool.widget_slots(definition, values)
        assert len(values) <= len(slots) and all(optional for _, _, optional in slots[len(values):]), where
        for (name, spec, _), value in zip(slots, values):
            check_value(f"{where}.{name}", spec, value)
        sockets = [(n, s[0], o) for n, s, o in tool.input_specs(definition) if not tool.is_widget(s)]
        assert [(i["name"], i["type"]) for i in node["inputs"]] == [(n, t) for n, t, _ in sockets], where
        assert all(i["link"] is not None for i, (_, _, optional) in zip(node["inputs"], sockets) if not optional), \
            f"{where}: a required input is not connected"
        assert [o["type"] for o in node["outputs"]] == list(definition["output"]), where

    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        output, inp = nodes[source]["outputs"][slot], nodes[target]["inputs"][target_slot]
        assert kind == output["type"] == inp["type"], f"{path.stem} link {link_id}"
        assert link_id in output["links"] and inp["link"] == link_id, f"{path.stem} link {link_id}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_prompt_gives_every_required_input(path, info):
    api = tool.ui_to_api(json.loads(path.read_text()), info)
    assert all(node["class_type"] not in tool.FRONTEND_ONLY for node in api.values())
    for node_id, node in api.items():
        for name, spec, optional in tool.input_specs(info[node["class_type"]]):
            assert optional or name in node["inputs"], f"{path.stem} node {node_id}: {name} missing"
    loaders = [n for n in api.values() if n["class_type"] == "DropletVideoModelLoader"]
    assert all(n["inputs"]["model_folder"] == "DropletVideo-V1.0-weights" for n in loaders)


def test_i2v_workflow_converts_as_the_frontend_queues_it(info):
    api = tool.ui_to_api(json.loads((ROOT / "workflows" / "droplet_i2v.json").read_text()), info)
    by_type = {node["class_type"]: node["inputs"] for node in api.values()}
    assert set(by_type) == {"DropletVideoModelLoader", "DropletVideoTextEncode", "LoadImage", "DropletVideoImageEncode",
                            "DropletVideoSampler", "DropletVideoVAEDecode", "CreateVideo", "SaveVideo"}
    sampler = by_type["DropletVideoSampler"]
    assert {k: v for k, v in sampler.items() if not isinstance(v, list)} == {
        "fps": 8, "steps": 50, "cfg": 6.0, "seed": 42, "scheduler": "ddim", "use_dynamic_cfg": False, "denoise": 1.0}
    assert {k: by_type["DropletVideoImageEncode"][k] for k in ("width", "height", "frames")} == \
        {"width": 672, "height": 384, "frames": 85}
    assert by_type["CreateVideo"]["fps"] == 8
    assert {k: by_type["SaveVideo"][k] for k in ("format", "format.codec")} == {"format": "mp4", "format.codec": "auto"}
    assert by_type["LoadImage"] == {"image": "example.png"}


def test_muted_nodes_are_dropped_with_their_links(info):
    workflow = json.loads((ROOT / "workflows" / "droplet_i2v.json").read_text())
    next(n for n in workflow["nodes"] if n["type"] == "LoadImage")["mode"] = tool.MUTED
    api = tool.ui_to_api(workflow, info)
    encode = next(n for n in api.values() if n["class_type"] == "DropletVideoImageEncode")
    assert "LoadImage" not in {n["class_type"] for n in api.values()} and "start_image" not in encode["inputs"]


@pytest.mark.skipif(bool(os.environ.get("COMFYUI_PATH")), reason="the demo runs on the ComfyUI stand-in")
def test_demo_writes_a_video(models_dir, tmp_path):
    out = tmp_path / "demo.mp4"
    tool.main(["--demo", "--out", str(out), "--frames", "5", "--steps", "2"])
    assert out.stat().st_size > 0


# The shipped graphs run: each executed through the node classes on the tiny checkpoint ----------------

SMALL = argparse.Namespace(width=64, height=64, frames=5, steps=2)


def run_graph(name, pack, info, tmp_path, **overrides):
    """The workflow at SMALL sizes (and `overrides`, by input name): the frames SaveVideo got."""
    api = tool.make_small(tool.ui_to_api(json.loads((ROOT / "workflows" / f"{name}.json").read_text()), info), SMALL)
    for node in api.values():
        node["inputs"].update({k: v for k, v in overrides.items() if k in node["inputs"]})
    results = tool.execute(api, pack, tool.demo_core_nodes(tmp_path / f"{name}.mp4", SMALL.width, SMALL.height))
    save = next(i for i, node in api.items() if node["class_type"] == "SaveVideo")
    frames, fps = results[save][0]
    assert fps == 8 and (tmp_path / f"{name}.mp4").stat().st_size > 0
    return frames


@pytest.fixture(scope="module")
def workflow_lora(models_dir, loaded) -> str:
    write_peft(models_dir / "loras" / "droplet_test_workflow.safetensors",
               random_factors(loaded[0].patcher.model.module, seed=3), alpha=4.0)
    return "droplet_test_workflow.safetensors"


def test_lora_workflow_runs_and_its_lora_changes_the_video(pack, info, tmp_path, workflow_lora):
    plain = run_graph("droplet_i2v", pack, info, tmp_path)
    with_lora = run_graph("droplet_lora", pack, info, tmp_path, lora_name=workflow_lora)
    switched_off = run_graph("droplet_lora", pack, info, tmp_path, lora_name=workflow_lora, strength=0.0)
    assert with_lora.shape == plain.shape == (8, 64, 64, 3)  # 2 latent frames decode to 8 (quirk 3)
    assert (with_lora - plain).abs().max() > 0.01
    torch.testing.assert_close(switched_off, plain, atol=1e-6, rtol=0)


def test_long_video_workflow_renders_past_the_trained_length(pack, info, tmp_path):
    workflow = json.loads((ROOT / "workflows" / "droplet_long_video.json").read_text())
    encode = next(n for n in workflow["nodes"] if n["type"] == "DropletVideoImageEncode")
    assert encode["widgets_values"][2] == 169  # twice the release's 85 frames, less the shared one
    frames = run_graph("droplet_long_video", pack, info, tmp_path, frames=169)
    assert frames.shape == (169, 64, 64, 3)  # 43 latent frames; the model's window is 22


def test_fps_sweep_workflow_puts_the_fps_values_side_by_side(pack, info, tmp_path):
    frames = run_graph("droplet_fps_sweep", pack, info, tmp_path)
    assert frames.shape == (8, 64, 4 * 64, 3)
    panels = frames.split(64, dim=2)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(panels, panels[1:]))  # each fps its own motion


def test_low_vram_workflow_turns_the_memory_settings_on_and_keeps_the_video(pack, info, tmp_path):
    workflow = json.loads((ROOT / "workflows" / "droplet_i2v_low_vram.json").read_text())
    api = tool.ui_to_api(workflow, info)
    inputs = {node["class_type"]: node["inputs"] for node in api.values()}
    assert (inputs["DropletVideoModelLoader"]["offload"], inputs["DropletVideoModelLoader"]["text_encoder_device"]) \
        == ("auto", "cpu")
    assert inputs["DropletVideoImageEncode"]["vae_tiling"] and inputs["DropletVideoVAEDecode"]["tiling"]
    torch.testing.assert_close(run_graph("droplet_i2v_low_vram", pack, info, tmp_path),
                               run_graph("droplet_i2v", pack, info, tmp_path), atol=1e-6, rtol=0)
    # At the real size the VAE works in tiles (64 px ones for the test VAE): the video keeps its size.
    frames = run_graph("droplet_i2v_low_vram", pack, info, tmp_path, width=672, height=384, steps=1)
    assert frames.shape == (8, 384, 672, 3)
