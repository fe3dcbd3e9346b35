"""The shipped workflows: UI format as the frontend saves it, node types that exist, widget
values that fit the inputs, links between matching types, nodes that do not cover each other;
their API conversion (the wiring of the native MODEL / CONDITIONING / LATENT graph) and the
headless demo; each graph run through the node classes on the tiny checkpoint."""

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX

import run_workflow as tool
from droplet_core.sample_plan import initial_noise
from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER
from droplet_core.tiny import TRANSFORMER
from droplet_core.shapes import decoded_frames, latent_frames
from interp_files import write_random_rife
from lora_files import random_factors, write_peft
from node_fixtures import loaded  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"}
CORE_SAMPLING = {"droplet_core_ksampler", "droplet_core_model_patches",  # need this pack and core nodes only
                 "droplet_long_video_context_windows"}
INTERPOLATE = "droplet_frame_interpolation"  # core frame interpolation: ComfyUI 0.33 and later
PATCHED_SAMPLER = "droplet_attention_backend"  # a core model patch before the DropletVideo Sampler
SEGMENTED = {"droplet_extend_in_segments"}  # several samplers: wired as a chain (test_extend_workflow_chains_...)


def load(name: str) -> dict:
    return json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())


def by_type(api: dict, class_type: str) -> tuple:
    """(id, inputs) of the API prompt's one node of this type."""
    found = [(i, node["inputs"]) for i, node in api.items() if node["class_type"] == class_type]
    assert len(found) == 1, f"{len(found)} {class_type} nodes"
    return found[0]


def source(api: dict, link) -> tuple:
    """(class_type, output index) an API input [node id, index] comes from."""
    assert isinstance(link, list), f"{link!r} is a widget value, not a link"
    return api[link[0]]["class_type"], link[1]


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
        linked_widgets = [i for i in node["inputs"] if "widget" in i]  # a widget fed by a link (SaveLoRA's steps)
        assert all(i["widget"]["name"] == i["name"] and i["link"] is not None and i["name"] in
                   {name for name, _, _ in slots} for i in linked_widgets), where
        node_sockets = [i for i in node["inputs"] if "widget" not in i]
        assert [(i["name"], i["type"]) for i in node_sockets] == [(n, t) for n, t, _ in sockets], where
        assert all(i["link"] is not None for i, (_, _, optional) in zip(node_sockets, sockets) if not optional), \
            f"{where}: a required input is not connected"
        assert [o["type"] for o in node["outputs"]] == list(definition["output"]), where

    for link_id, source, slot, target, target_slot, kind in workflow["links"]:
        output, inp = nodes[source]["outputs"][slot], nodes[target]["inputs"][target_slot]
        # the frontend types a link by what its ends share: an input may take several ("DROPLET_VAE,VAE")
        assert kind == output["type"] and kind in inp["type"].split(","), f"{path.stem} link {link_id}"
        assert link_id in output["links"] and inp["link"] == link_id, f"{path.stem} link {link_id}"


# Layout: what the frontend draws. A node's box is its pos and size plus the title bar above pos;
# the frontend grows a node that is smaller than its slots and widgets need (ComfyUI's
# loadGraphData), so a saved size below that would hide the overlap from this check.

TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT
SLOT, WIDGET, MULTILINE, PREVIEW = 20, 24, 100, 200  # rows: sockets; widgets; text boxes; upload previews


def needed_size(node: dict, definition: dict) -> tuple:
    """Roughly the least (width, height) the frontend gives this node: socket rows, then widgets."""
    values = node["widgets_values"]
    slots = tool.widget_slots(definition, values)
    height = 10 + SLOT * max(len(node["inputs"]), len(node["outputs"]))
    for name, spec, _ in slots:
        options = spec[1] if len(spec) > 1 else {}
        height += MULTILINE if options.get("multiline") else PREVIEW if spec[0] == "IMAGEUPLOAD" else WIDGET
    return 200, height


def box(node: dict) -> tuple:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE, x + w, y + h


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_node_covers_another(path, info):
    nodes = json.loads(path.read_text())["nodes"]
    for node in nodes:
        definition = info[node["type"]]
        width, height = needed_size(node, definition)
        assert node["size"][0] >= width and node["size"][1] >= height, \
            f"{path.stem} node {node['id']} {node['type']}: size {node['size']} < about [{width}, {height}]"
    for i, a in enumerate(nodes):
        ax0, ay0, ax1, ay1 = box(a)
        for b in nodes[i + 1:]:
            bx0, by0, bx1, by1 = box(b)
            assert not (ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1), \
                f"{path.stem}: node {a['id']} {a['type']} and node {b['id']} {b['type']} overlap"


def test_the_layout_check_catches_the_old_overlap(info):
    """The Load Image box over the loader's lower widgets (what users saw before the relayout)."""
    workflow = load("droplet_image_to_video")
    nodes = {n["type"]: n for n in workflow["nodes"]}
    loader, image = nodes["DropletVideoModelLoader"], nodes["LoadImage"]
    image["pos"] = [loader["pos"][0], loader["pos"][1] + needed_size(loader, info[loader["type"]])[1] - 40]
    ax0, ay0, ax1, ay1 = box(loader)
    bx0, by0, bx1, by1 = box(image)
    assert ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
    loader["size"] = [340, 130]  # the old saved size: smaller than its five widgets need
    assert needed_size(loader, info[loader["type"]])[1] > 130


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_prompt_gives_every_required_input(path, info):
    api = tool.ui_to_api(json.loads(path.read_text()), info)
    assert all(node["class_type"] not in tool.FRONTEND_ONLY for node in api.values())
    for node_id, node in api.items():
        for name, spec, optional in tool.input_specs(info[node["class_type"]]):
            assert optional or name in node["inputs"], f"{path.stem} node {node_id}: {name} missing"
    loaders = [n for n in api.values() if n["class_type"] == "DropletVideoModelLoader"]
    release = "Droplet3D-V1.0-weights" if path.stem.startswith("droplet3d") else "DropletVideo-V1.0-weights"
    assert all(n["inputs"]["model_folder"] == release for n in loaders)


def test_i2v_workflow_converts_as_the_frontend_queues_it(info):
    api = tool.ui_to_api(load("droplet_image_to_video"), info)
    assert {node["class_type"] for node in api.values()} == {
        "DropletVideoModelLoader", "DropletVideoTextEncode", "LoadImage", "DropletVideoImageEncode",
        "DropletVideoSampler", "DropletVideoVAEDecode", "CreateVideo", "SaveVideo"}
    _, sampler = by_type(api, "DropletVideoSampler")
    assert {k: v for k, v in sampler.items() if not isinstance(v, list)} == {
        "steps": 50, "cfg": 6.0, "seed": 42, "scheduler": "ddim", "use_dynamic_cfg": False, "denoise": 1.0,
        "long_video": False, "window_overlap": 0, "cache_threshold": 0.0}
    _, encode = by_type(api, "DropletVideoImageEncode")
    assert {k: encode[k] for k in ("width", "height", "frames", "fps", "vae_tiling")} == \
        {"width": 672, "height": 384, "frames": 85, "fps": 8, "vae_tiling": False}
    _, loader = by_type(api, "DropletVideoModelLoader")
    assert loader == {"model_folder": "DropletVideo-V1.0-weights", "precision": "bf16", "weight_format": "default",
                      "attention": "sdpa", "text_encoder_device": "default"}
    assert by_type(api, "CreateVideo")[1]["fps"] == 8
    _, save = by_type(api, "SaveVideo")
    assert {k: save[k] for k in ("format", "format.codec")} == {"format": "mp4", "format.codec": "auto"}
    assert by_type(api, "LoadImage")[1] == {"image": "example.png"}


# The wiring of each graph: MODEL from the loader (through LoRA loaders and model patches), the
# prompt through the conditioning node, its latent (or VAE Encode's) into the sampler.
MODEL_PATH = {"droplet_lora": ["DropletVideoLoraLoader"],
              "droplet_core_model_patches": ["TorchCompileModel", "EasyCache"],
              PATCHED_SAMPLER: ["ModelAttentionBackend"],
              "droplet_long_video_context_windows": ["ContextWindowsManual"]}
LOADER = {"droplet_split_loaders": ("DropletVideoTransformerLoader", "DropletVideoT5Loader")}


TRAINING = "droplet_train_lora"  # no sampler: core Train LoRA (test_train_lora_workflow_is_wired_for_core_training)


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p.stem != TRAINING and p.stem not in SEGMENTED], ids=lambda p: p.stem)
def test_graph_is_wired_as_a_native_model(path, info):
    name = path.stem
    api = tool.ui_to_api(json.loads(path.read_text()), info)
    kinds = {node["class_type"] for node in api.values()}
    cond_type = "DropletVideoEmptyConditioning" if name in ("droplet_text_to_video", "droplet_video_to_video") else "DropletVideoImageEncode"
    loader, t5 = LOADER.get(name, ("DropletVideoModelLoader", "DropletVideoModelLoader"))
    text_id, text = by_type(api, "DropletVideoTextEncode")
    assert source(api, text["text_encoder"]) == (t5, 2 if t5 == "DropletVideoModelLoader" else 0)
    cond_id, cond = by_type(api, cond_type)
    assert (cond["positive"], cond["negative"]) == ([text_id, 0], [text_id, 1])

    sampler_type = next(k for k in ("DropletVideoSampler", "KSampler", "DropletVideoFPSSweep") if k in kinds)
    assert (name in CORE_SAMPLING) == (sampler_type == "KSampler")
    sampler_id, sampler = by_type(api, sampler_type)
    assert (sampler["positive"], sampler["negative"]) == ([cond_id, 0], [cond_id, 1])
    latent = sampler["latent_image" if sampler_type == "KSampler" else "latent"]
    assert source(api, latent) == (("DropletVideoVAEEncode", 0) if name == "droplet_video_to_video" else (cond_type, 2))

    model = sampler["model"]  # back through the patches to the loader
    for patch in MODEL_PATH.get(name, []):
        assert source(api, model) == (patch, 0)
        model = api[model[0]]["inputs"]["model"]
    assert source(api, model) == (loader, 0)
    if sampler_type != "DropletVideoFPSSweep":
        _, decode = by_type(api, "DropletVideoVAEDecode")
        assert decode["latent"] == [sampler_id, 0]


@pytest.mark.parametrize("name", sorted(CORE_SAMPLING))
def test_core_sampler_workflows_use_core_nodes_with_the_release_settings(name, info):
    api = tool.ui_to_api(load(name), info)
    pack = {k for k in info if k.startswith("DropletVideo")}
    assert {n["class_type"] for n in api.values()} - pack <= {"LoadImage", "KSampler", "EasyCache", "TorchCompileModel",
                                                               "ContextWindowsManual", "CreateVideo", "SaveVideo"}
    _, ksampler = by_type(api, "KSampler")
    assert {k: v for k, v in ksampler.items() if not isinstance(v, list)} == {
        "seed": 42, "steps": 50, "cfg": 6.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}
    if name == "droplet_core_model_patches":
        assert by_type(api, "EasyCache")[1]["reuse_threshold"] == 0.2
        assert by_type(api, "TorchCompileModel")[1]["backend"] == "inductor"


def test_train_lora_workflow_is_wired_for_core_training(info):
    """Each clip: Load Video -> frames -> Upscale Image -> VAE Encode (the training latent) and Image
    Encode on its first frame (image + FPS condition, same size and frame count); the clips'
    latents batched and their conditionings combined in the same order into core Train LoRA on the
    loader's MODEL; Save LoRA names the file with Train LoRA's step count."""
    api = tool.ui_to_api(load(TRAINING), info)
    _, train = by_type(api, "TrainLoraNode")
    assert source(api, train["model"]) == ("DropletVideoModelLoader", 0)
    (_, batch), (_, combine) = by_type(api, "LatentBatch"), by_type(api, "ConditioningCombine")
    assert (source(api, train["latents"]), source(api, train["positive"])) == (("LatentBatch", 0),
                                                                               ("ConditioningCombine", 0))
    for latent, cond in ((batch["samples1"], combine["conditioning_1"]), (batch["samples2"], combine["conditioning_2"])):
        vae_encode, encode = api[latent[0]]["inputs"], api[cond[0]]["inputs"]
        assert vae_encode["image"] == encode["start_image"] and source(api, encode["start_image"]) == ("ImageScale", 0)
        scale = api[vae_encode["image"][0]]["inputs"]
        frames = api[scale["image"][0]]["inputs"]
        assert source(api, scale["image"]) == ("ImageFromBatch", 0)
        assert source(api, frames["image"]) == ("GetVideoComponents", 0)
        assert (scale["width"], scale["height"], frames["length"]) == (encode["width"], encode["height"],
                                                                        encode["frames"])
        assert encode["frames"] % 4 == 1 and encode["fps"] == 8
    assert {k: v for k, v in train.items() if k in ("steps", "batch_size", "rank", "gradient_checkpointing")} == {
        "steps": 100, "batch_size": 1, "rank": 16, "gradient_checkpointing": True}
    _, save = by_type(api, "SaveLoRA")
    assert source(api, save["lora"]) == ("TrainLoraNode", 0) and source(api, save["steps"]) == ("TrainLoraNode", 2)


def test_v2v_encodes_the_video_and_conditions_with_empty_conditioning(info):
    api = tool.ui_to_api(load("droplet_video_to_video"), info)
    _, sampler = by_type(api, "DropletVideoSampler")
    _, empty = by_type(api, "DropletVideoEmptyConditioning")
    _, scale = by_type(api, "ImageScale")
    _, batch = by_type(api, "ImageFromBatch")
    assert sampler["denoise"] == 0.7
    assert (scale["width"], scale["height"], batch["length"]) == (empty["width"], empty["height"], empty["frames"])
    assert source(api, by_type(api, "DropletVideoVAEEncode")[1]["image"]) == ("ImageScale", 0)


def test_low_vram_loader_has_no_offload_input_and_its_note_says_why(info):
    assert "offload" not in {name for name, _, _ in tool.input_specs(info["DropletVideoModelLoader"])}
    note = next(n for n in load("droplet_low_vram")["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "partially" in note and "offload" not in note


def test_muted_nodes_are_dropped_with_their_links(info):
    workflow = load("droplet_image_to_video")
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
CORE_RUN_REASON = "core KSampler / EasyCache / TorchCompileModel need a real ComfyUI: set COMFYUI_PATH"


def run_api(name, pack, info, tmp_path, size=SMALL, **overrides):
    """The workflow at `size` (and `overrides`, by input name): (API prompt, every node's outputs)."""
    api = tool.make_small(tool.ui_to_api(load(name), info), size)
    for node in api.values():
        node["inputs"].update({k: v for k, v in overrides.items() if k in node["inputs"]})
    core = tool.demo_core_nodes(tmp_path / f"{name}.mp4", size.width, size.height)
    core.update(tool.real_core_nodes({n["class_type"] for n in api.values()} & tool.REAL_CORE.keys()))
    if name == PATCHED_SAMPLER:
        core["ModelAttentionBackend"] = model_attention_backend()
    return api, tool.execute(api, pack, core)


def model_attention_backend():
    """Core Model Attention Backend: the node itself with COMFYUI_PATH (its module imports ComfyUI's
    nodes.py, whose name is this pack's folder on the tests' path), else what it does on 0.33."""
    if COMFYUI_PATH:
        from test_nodes_lora import core_nodes_module

        pack_nodes = sys.modules.pop("nodes", None)
        sys.modules["nodes"] = core_nodes_module()
        try:
            return importlib.import_module("comfy_extras.nodes_model_advanced").ModelAttentionBackend
        finally:
            sys.modules.pop("nodes")
            if pack_nodes is not None:
                sys.modules["nodes"] = pack_nodes

    def stand_in(model, attention):
        assert attention == "pytorch attention"
        patched = model.clone()
        patched.set_model_optimized_attention(comfy_attention.get_attention_function("pytorch"))
        return (patched,)

    return stand_in


def run_graph(name, pack, info, tmp_path, size=SMALL, **overrides):
    """The frames SaveVideo got."""
    api, results = run_api(name, pack, info, tmp_path, size, **overrides)
    frames, fps = results[by_type(api, "SaveVideo")[0]][0]
    assert fps == 8 and (tmp_path / f"{name}.mp4").stat().st_size > 0
    return frames


@pytest.fixture(scope="module")
def workflow_lora(models_dir, loaded) -> str:
    write_peft(models_dir / "loras" / "droplet_test_workflow.safetensors",
               random_factors(loaded[0].model.diffusion_model, seed=3), alpha=4.0)
    return "droplet_test_workflow.safetensors"


def test_lora_workflow_runs_and_its_lora_changes_the_video(pack, info, tmp_path, workflow_lora):
    plain = run_graph("droplet_image_to_video", pack, info, tmp_path)
    with_lora = run_graph("droplet_lora", pack, info, tmp_path, lora_name=workflow_lora)
    switched_off = run_graph("droplet_lora", pack, info, tmp_path, lora_name=workflow_lora, strength=0.0)
    assert with_lora.shape == plain.shape == (8, 64, 64, 3)  # 2 latent frames decode to 8 (quirk 3)
    assert (with_lora - plain).abs().max() > 0.01
    torch.testing.assert_close(switched_off, plain, atol=1e-6, rtol=0)


def test_patched_sampler_workflow_runs_model_attention_backend_in_every_block(pack, info, tmp_path, loaded,  # noqa: F811
                                                                              monkeypatch):
    if not hasattr(comfy.model_patcher.ModelPatcher, "set_model_optimized_attention"):
        pytest.skip("this ComfyUI has no Model Attention Backend (ComfyUI 0.33 or newer)")
    plain = run_graph("droplet_image_to_video", pack, info, tmp_path)
    calls = []
    pytorch_attention = comfy_attention.get_attention_function("pytorch")

    def counted(*args, **kwargs):
        calls.append(1)
        return pytorch_attention(*args, **kwargs)

    monkeypatch.setitem(comfy_attention.REGISTERED_ATTENTION_FUNCTIONS, "pytorch", counted)  # what the node picks
    patched = run_graph(PATCHED_SAMPLER, pack, info, tmp_path)
    assert len(calls) == SMALL.steps * loaded[0].model.droplet_config.num_layers  # once per block per step
    torch.testing.assert_close(patched, plain, atol=1e-5, rtol=0)  # PyTorch attention: the i2v video


def test_t2v_and_start_end_workflows_run_and_differ_from_i2v(pack, info, tmp_path):
    i2v = run_graph("droplet_image_to_video", pack, info, tmp_path)
    t2v = run_graph("droplet_text_to_video", pack, info, tmp_path)
    start_end = run_graph("droplet_start_and_end_frame", pack, info, tmp_path)
    assert t2v.shape == start_end.shape == i2v.shape == (8, 64, 64, 3)
    assert (t2v - i2v).abs().max() > 1e-3 and (start_end - i2v).abs().max() > 1e-3  # the images reach the model


def test_long_video_workflow_renders_past_the_trained_length(pack, info, tmp_path):
    encode = next(n for n in load("droplet_long_video")["nodes"] if n["type"] == "DropletVideoImageEncode")
    assert encode["widgets_values"][2] == 169  # twice the release's 85 frames, less the shared one
    frames = run_graph("droplet_long_video", pack, info, tmp_path, frames=169)
    assert frames.shape == (169, 64, 64, 3)  # 43 latent frames; the model's window is 22


def test_fps_sweep_workflow_puts_the_fps_values_side_by_side(pack, info, tmp_path):
    frames = run_graph("droplet_fps_sweep", pack, info, tmp_path)
    assert frames.shape == (8, 64, 4 * 64, 3)
    panels = frames.split(64, dim=2)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(panels, panels[1:]))  # each fps its own motion


@pytest.fixture
def tiled_calls(monkeypatch) -> dict:
    """How often diffusers' tiled encode and decode ran (the VAE tiles only frames larger than a tile)."""
    calls = {"tiled_encode": 0, "tiled_decode": 0}
    for name in calls:
        original = getattr(AutoencoderKLCogVideoX, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(AutoencoderKLCogVideoX, name, counted)
    return calls


# 128 x 96: larger than the test VAE's 64 px tiles (half its 128 px sample size), so tiling tiles.
TILED = argparse.Namespace(width=128, height=96, frames=5, steps=2)


def test_low_vram_workflow_turns_the_memory_settings_on_and_keeps_the_video(pack, info, tmp_path, tiled_calls,
                                                                           monkeypatch):
    api = tool.ui_to_api(load("droplet_low_vram"), info)
    assert by_type(api, "DropletVideoModelLoader")[1]["text_encoder_device"] == "cpu"
    assert by_type(api, "DropletVideoImageEncode")[1]["vae_tiling"] and by_type(api, "DropletVideoVAEDecode")[1]["tiling"]

    plain = run_graph("droplet_image_to_video", pack, info, tmp_path, TILED)
    assert tiled_calls == {"tiled_encode": 0, "tiled_decode": 0}
    # ComfyUI's text-encoder device is the CPU on the stand-in; under another name ('cpu:0', a move
    # there changes nothing) a loader that ignores text_encoder_device = cpu is told apart.
    monkeypatch.setattr(comfy.model_management, "text_encoder_device", lambda: torch.device("cpu:0"))
    api, results = run_api("droplet_low_vram", pack, info, tmp_path, TILED)
    assert tiled_calls["tiled_encode"] >= 1 and tiled_calls["tiled_decode"] >= 1  # the tiled path ran
    text_encoder = results[by_type(api, "DropletVideoModelLoader")[0]][2]
    assert text_encoder.patcher.load_device == torch.device("cpu")  # T5 stays in CPU memory
    low_vram = results[by_type(api, "SaveVideo")[0]][0][0]
    assert low_vram.shape == plain.shape == (8, 96, 128, 3)  # the video keeps its size
    # Tiles blend at their seams: close to the untiled video, not equal to it.
    assert 0 < (low_vram - plain).abs().mean() < 0.05


@pytest.mark.parametrize("name", sorted(CORE_SAMPLING))
def test_core_sampler_graphs_stop_before_loading_on_the_stand_in(name, pack, info, tmp_path):
    api = tool.ui_to_api(load(name), info)
    with pytest.raises(ValueError, match="KSampler.*COMFYUI_PATH"):
        tool.execute(api, pack, tool.demo_core_nodes(tmp_path / "x.mp4", 64, 64))


# The core-sampler bound (README, docs/core_ksampler.md): euler/simple from the reference's noise,
# tiny model, 128x128x9, 50 steps, cfg 6 (the workflow's sampler, scheduler and cfg), final latents
# in the model's space.
CORE_SIZE = argparse.Namespace(width=128, height=128, frames=9, steps=50)
CORE_REL_L2, CORE_MAX_ABS = 9.9e-5, 5.0e-4


def reference_noise(latent_image, seed, noise_inds=None):
    """comfy.sample.prepare_noise drawing the DropletVideo Sampler's noise for the seed ([1, F, C, h, w]
    from a generator on the device, quirk 8) in ComfyUI's layout, so both samplers start alike."""
    batch, channels, frames, height, width = latent_image.shape
    return initial_noise((batch, frames, channels, height, width), seed, "cpu", torch.float32).movedim(1, 2)


@pytest.mark.skipif(not COMFYUI_PATH, reason=CORE_RUN_REASON)
def test_core_ksampler_workflow_stays_within_the_documented_bound_of_the_pack_sampler(pack, info, tmp_path,
                                                                                     monkeypatch):
    import comfy.sample

    api, results = run_api("droplet_image_to_video", pack, info, tmp_path, CORE_SIZE)
    droplet = results[by_type(api, "DropletVideoSampler")[0]][0]["samples"]
    scale = results[by_type(api, "DropletVideoModelLoader")[0]][0].model.latent_format.scale_factor
    monkeypatch.setattr(comfy.sample, "prepare_noise", reference_noise)
    api, results = run_api("droplet_core_ksampler", pack, info, tmp_path, CORE_SIZE)
    _, ksampler = by_type(api, "KSampler")
    assert (ksampler["sampler_name"], ksampler["scheduler"], ksampler["cfg"]) == ("euler", "simple", 6.0)
    core = results[by_type(api, "KSampler")[0]][0]["samples"]
    assert core.shape == droplet.shape == (1, 16, 3, 16, 16)
    difference = (core - droplet) * scale
    # 10% over the README's numbers: the workflow's prompt and image are not the benchmark's.
    assert float(difference.norm() / (droplet * scale).norm()) < 1.1 * CORE_REL_L2
    assert float(difference.abs().max()) < 1.1 * CORE_MAX_ABS
    frames = results[by_type(api, "SaveVideo")[0]][0][0]
    assert frames.shape == (9, 128, 128, 3) and torch.isfinite(frames).all()


@pytest.mark.skipif(not COMFYUI_PATH, reason=CORE_RUN_REASON)
def test_model_patches_workflow_runs_easycache_and_torch_compile_on_the_model(pack, info, tmp_path):
    api, results = run_api("droplet_core_model_patches", pack, info, tmp_path)
    patched = results[by_type(api, "TorchCompileModel")[0]][0]
    assert "easycache" in patched.model_options["transformer_options"]
    frames = results[by_type(api, "SaveVideo")[0]][0][0]
    assert frames.shape == (8, 64, 64, 3) and torch.isfinite(frames).all()


# Core context windows and core frame interpolation -------------------------------------------------------

def test_context_windows_workflow_cuts_the_frames_into_windows_that_fit_the_table(info):
    api = tool.ui_to_api(load("droplet_long_video_context_windows"), info)
    windows_id, windows = by_type(api, "ContextWindowsManual")
    assert (windows["dim"], windows["context_length"], windows["causal_window_fix"]) == \
        (2, COGVIDEOX_5B_CLASS_TRANSFORMER.latent_frames - 1, True)  # + the causal-fix frame = an 85-frame table
    assert COGVIDEOX_5B_CLASS_TRANSFORMER.latent_frames <= TRANSFORMER.latent_frames  # it runs on the tiny one
    assert 0 < windows["context_overlap"] < windows["context_length"]
    _, encode = by_type(api, "DropletVideoImageEncode")
    assert encode["model"] == [windows_id, 0] and encode["frames"] == 169  # Image Encode's check sees the windows


@pytest.mark.skipif(not COMFYUI_PATH, reason=CORE_RUN_REASON)
def test_context_windows_workflow_renders_past_the_table_on_core_ksampler(pack, info, tmp_path):
    past = TRANSFORMER.max_video_frames + 4  # one latent frame more than the table
    size = argparse.Namespace(width=32, height=32, frames=past, steps=2)
    frames = run_graph("droplet_long_video_context_windows", pack, info, tmp_path, size)
    # untrimmed: the reference's decode gives 4L frames for an even latent count L (24 on tiny-v4)
    assert frames.shape == (decoded_frames(latent_frames(past)), 32, 32, 3) and torch.isfinite(frames).all()


def test_interpolation_workflow_interpolates_the_decoded_video_for_playback(info):
    api = tool.ui_to_api(load(INTERPOLATE), info)
    loader_id, loader = by_type(api, "FrameInterpolationModelLoader")
    interpolate_id, interpolate = by_type(api, "FrameInterpolate")
    decode_id, _ = by_type(api, "DropletVideoVAEDecode")
    _, create = by_type(api, "CreateVideo")
    assert loader["model_name"] == "film_net_fp16.safetensors"  # core's Frame Interpolation template's file
    assert (interpolate["interp_model"], interpolate["images"]) == ([loader_id, 0], [decode_id, 0])
    assert create["images"] == [interpolate_id, 0] and create["fps"] == 8 * interpolate["multiplier"]
    assert by_type(api, "DropletVideoSampler")[1]["long_video"]
    assert by_type(api, "DropletVideoImageEncode")[1]["frames"] == 169


def has_frame_interpolation() -> bool:
    return bool(COMFYUI_PATH) and importlib.util.find_spec("comfy_extras.nodes_frame_interpolation") is not None


@pytest.mark.skipif(not has_frame_interpolation(), reason="core frame interpolation needs a real ComfyUI 0.33 or "
                    "later: set COMFYUI_PATH")
def test_interpolation_workflow_runs_core_frame_interpolation(pack, info, tmp_path):
    import folder_paths

    folder = tmp_path / "frame_interpolation"
    folder.mkdir()
    write_random_rife(folder / "droplet_test_rife.safetensors")  # core's RIFE class, random weights
    folder_paths.add_model_folder_path("frame_interpolation", str(folder))
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        api, results = run_api(INTERPOLATE, pack, info, tmp_path, model_name="droplet_test_rife.safetensors")
    decoded = results[by_type(api, "DropletVideoVAEDecode")[0]][0]
    frames, fps = results[by_type(api, "SaveVideo")[0]][0]
    assert decoded.shape == (8, 64, 64, 3) and frames.shape == (15, 64, 64, 3) and fps == 16
    torch.testing.assert_close(frames[::2], decoded, atol=1e-6, rtol=0)  # the video's own frames, in between new ones
    assert torch.isfinite(frames).all() and (frames[1::2] - frames[:-1:2]).abs().max() > 1e-3


def test_extend_workflow_chains_three_segments_each_with_its_prompt_fps_and_seed(info):
    api = tool.ui_to_api(load("droplet_extend_in_segments"), info)
    of_type = lambda kind: sorted((i for i, n in api.items() if n["class_type"] == kind), key=int)  # noqa: E731
    texts, samplers, decodes, joins = (of_type(k) for k in ("DropletVideoTextEncode", "DropletVideoSampler",
                                                              "DropletVideoVAEDecode", "DropletVideoJoinSegments"))
    (first_id, first), = [(i, n["inputs"]) for i, n in api.items() if n["class_type"] == "DropletVideoImageEncode"]
    extends = of_type("DropletVideoExtend")
    assert len(texts) == len(samplers) == len(decodes) == 3 and len(extends) == len(joins) == 2
    assert len({api[i]["inputs"]["prompt"] for i in texts}) == 3
    conds = [first_id, *extends]
    assert [api[c]["inputs"]["fps"] for c in conds] == [8, 16, 4]
    assert [api[s]["inputs"]["seed"] for s in samplers] == [42, 43, 44]
    for text, cond, sampler, decode in zip(texts, conds, samplers, decodes):
        assert api[cond]["inputs"]["positive"] == [text, 0] and api[sampler]["inputs"]["positive"] == [cond, 0]
        assert api[sampler]["inputs"]["latent"] == [cond, 2] and api[decode]["inputs"]["latent"] == [sampler, 0]
        assert api[decode]["inputs"]["trim_to_frames"]
    previous = [decodes[0], 0]
    for extend_id, join_id, decode in zip(extends, joins, decodes[1:]):
        assert api[extend_id]["inputs"]["previous"] == previous and api[extend_id]["inputs"]["overlap"] == 9
        join = api[join_id]["inputs"]
        assert (join["previous"], join["segment"], join["reference"]) == (previous, [decode, 0], [decodes[0], 0])
        assert join["overlap"] == 9 and join["drift_control"]
        previous = [join_id, 0]
    assert by_type(api, "CreateVideo")[1]["images"] == previous


def test_extend_workflow_runs_and_joins_without_repeated_frames(pack, info, tmp_path):
    size = argparse.Namespace(width=64, height=64, frames=9, steps=2)
    frames = run_graph("droplet_extend_in_segments", pack, info, tmp_path, size, overlap=5)
    assert frames.shape == (9 + 2 * (9 - 5), 64, 64, 3)
