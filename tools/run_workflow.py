"""Convert a ComfyUI workflow (UI format, as the frontend saves it) to the API format, and run it.

    python tools/run_workflow.py example_workflows/droplet_image_to_video.json                 # print the API prompt
    python tools/run_workflow.py --demo --out demo.mp4                      # run i2v headless on the tiny model
    python tools/run_workflow.py example_workflows/droplet_image_to_video.json --server http://127.0.0.1:8188 [--small]

--demo runs the i2v workflow's graph through this pack's node classes with the ComfyUI
stand-in (tests/comfy_stub) on the built-in tiny checkpoint, substituting the model folder,
the start image (a generated one) and small sizes (on the conditioning nodes, which set the
video's size, and on the samplers' steps); it needs no ComfyUI. Graphs with core samplers or
model patches (KSampler, EasyCache, TorchCompileModel) need a real ComfyUI: the stand-in has no
samplers. --server converts with the server's /object_info, POSTs /prompt and polls /history
until the outputs are there.
"""

import argparse
import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_NODES = ROOT / "tests" / "comfy_core_nodes.json"
PACK_NAME = "ComfyUI-DropletVideo"
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}  # never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")  # add an "upload" widget after the combo
MUTED, BYPASSED = 2, 4


# Node definitions ----------------------------------------------------------------------------------

def load_pack(stub: bool = True):
    """Imports the pack as ComfyUI does (its folder as a package), on the ComfyUI stand-in."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    if stub:
        sys.path.insert(0, str(ROOT / "tests" / "comfy_stub"))
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def node_info(cls) -> dict:
    """A classic-API node class as /object_info describes it."""
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {kind: list(spec) for kind, spec in inputs.items()},
            "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "name": cls.__name__, "description": getattr(cls, "DESCRIPTION", ""), "category": cls.CATEGORY,
            "output_node": getattr(cls, "OUTPUT_NODE", False)}


def object_info(pack) -> dict:
    """This pack's nodes plus the core nodes the shipped workflows use (tests/comfy_core_nodes.json)."""
    core = json.loads(CORE_NODES.read_text())["nodes"]
    return {**core, **{name: node_info(cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()}}


def input_specs(node_def: dict):
    """(name, spec, optional) in the node's input order (required, then optional)."""
    for kind in ("required", "optional"):
        specs = node_def["input"].get(kind, {})
        for name in node_def.get("input_order", {}).get(kind, list(specs)):
            yield name, specs[name], kind == "optional"


def is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(node_def: dict, values: list) -> list:
    """[(input name or None for an extra frontend widget, spec, optional)] in widgets_values order.

    Extra widgets: control_after_generate after a seed, "upload" after an upload combo. A dynamic
    combo is followed by its chosen option's widgets, named "parent.child"."""
    slots = []

    def add(name, spec, optional):
        if not is_widget(spec):
            return
        options = spec[1] if len(spec) > 1 else {}
        slots.append((name, spec, optional))
        if spec[0] == "COMFY_DYNAMICCOMBO_V3":
            chosen = values[len(slots) - 1] if len(slots) <= len(values) else None
            for option in options["options"]:
                if option["key"] == chosen:
                    for child, child_spec, child_optional in input_specs({"input": option["inputs"]}):
                        add(f"{name}.{child}", child_spec, optional or child_optional)
        if any(options.get(key) for key in UPLOAD_OPTIONS):
            slots.append((None, ["IMAGEUPLOAD"], optional))
        if options.get("control_after_generate") or (spec[0] == "INT" and name in ("seed", "noise_seed")):
            slots.append((None, ["control_after_generate"], optional))

    for name, spec, optional in input_specs(node_def):
        add(name, spec, optional)
    return slots


# UI -> API -------------------------------------------------------------------------------------------

def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt {node id: {"class_type", "inputs", "_meta"}} the frontend would queue.

    Widget values map in order onto the widget inputs; links become [source id, output index];
    frontend-only nodes (notes, primitives, reroutes) and muted nodes are dropped; a bypassed
    node passes its first input of the matching type through."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id, wanted_type):
        _, node_id, slot, _, _, _ = links[link_id]
        node = nodes[node_id]
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (node["type"] == "Reroute" or inp["type"] == wanted_type):
                    return source(inp["link"], wanted_type)
            return None
        if node["type"] in FRONTEND_ONLY or node.get("mode") == MUTED:
            return None
        return [str(node_id), slot]

    api = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode") in (MUTED, BYPASSED):
            continue
        if node["type"] not in object_info:
            raise ValueError(f"node {node['id']}: type {node['type']!r} is not installed (missing custom node pack?).")
        values = node.get("widgets_values") or []
        inputs = {name: value for (name, _, _), value in zip(widget_slots(object_info[node["type"]], values), values)
                  if name is not None}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None and (linked := source(inp["link"], inp["type"])) is not None:
                inputs[inp["name"]] = linked
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title", node["type"])}}
    return api


# Headless demo ---------------------------------------------------------------------------------------

def demo_core_nodes(out: Path, width: int, height: int):
    """Just enough of LoadImage, CreateVideo and SaveVideo for the i2v graph."""
    import torch

    from droplet_core.video_io import write_video

    def load_image(image, **_):
        y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        picture = torch.stack([x, y, 1 - x * y], dim=-1)[None]
        return picture, torch.zeros(1, height, width)

    def save_video(video, filename_prefix, **_):
        frames, fps = video
        print(f"wrote {write_video(frames, out, fps)}")
        return (video,)

    return {"LoadImage": load_image, "CreateVideo": lambda images, fps, **_: ((images, fps),),
            "SaveVideo": save_video}


def execute(api: dict, pack, core: dict) -> dict:
    """Runs an API prompt in dependency order (no caching, no validation: a test harness)."""
    missing = sorted({n["class_type"] for n in api.values()} - set(pack.NODE_CLASS_MAPPINGS) - set(core))
    if missing:  # before any model loads
        raise ValueError(f"no stand-in for core node(s) {', '.join(missing)}; {', '.join(REAL_CORE)} need a real "
                         f"ComfyUI (COMFYUI_PATH, or --server).")
    results, pending = {}, dict(api)
    while pending:
        ready = [i for i, n in pending.items()
                 if all(v[0] in results for v in n["inputs"].values() if isinstance(v, list))]
        if not ready:
            raise ValueError(f"the graph has a cycle or a missing node among {sorted(pending)}.")
        for node_id in ready:
            node = pending.pop(node_id)
            kwargs = {k: results[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            if node["class_type"] in pack.NODE_CLASS_MAPPINGS:
                results[node_id] = call_node(pack.NODE_CLASS_MAPPINGS[node["class_type"]], kwargs)
            elif isinstance(core.get(node["class_type"]), type):  # a real ComfyUI's node class
                results[node_id] = call_node(core[node["class_type"]], kwargs)
            else:
                results[node_id] = core[node["class_type"]](**kwargs)
    return results


def call_node(cls, kwargs: dict) -> tuple:
    """A node's outputs, called as ComfyUI's executor calls it: only the inputs the node declares
    (a graph saved on another ComfyUI may carry more: ContextWindowsManual has fewer on January
    2026's), classic nodes through FUNCTION, V3 nodes (comfy_api io.ComfyNode) through the
    classmethod execute, whose NodeOutput holds them."""
    declared = {name for kind in ("required", "optional") for name in cls.INPUT_TYPES().get(kind, {})}
    kwargs = {name: value for name, value in kwargs.items() if name in declared}
    if hasattr(cls, "define_schema"):
        return tuple(cls.execute(**kwargs).args)
    return getattr(cls(), cls.FUNCTION)(**kwargs)


# Core nodes the stand-in cannot imitate: (module, class) in a real ComfyUI.
REAL_CORE = {"KSampler": ("nodes", "KSampler"), "EasyCache": ("comfy_extras.nodes_easycache", "EasyCacheNode"),
             "TorchCompileModel": ("comfy_extras.nodes_torch_compile", "TorchCompileModel"),
             "ContextWindowsManual": ("comfy_extras.nodes_context_windows", "ContextWindowsManualNode"),
             "FrameInterpolationModelLoader": ("comfy_extras.nodes_frame_interpolation",
                                               "FrameInterpolationModelLoader"),
             "FrameInterpolate": ("comfy_extras.nodes_frame_interpolation", "FrameInterpolate")}


def comfyui_nodes_module():
    """The real ComfyUI's nodes.py, loaded from its file beside the comfy package: where the pack's
    root is on sys.path (the tests'), the name `nodes` is the pack's own folder."""
    import comfy

    if "comfyui_core_nodes" not in sys.modules:
        nodes_py = Path(next(iter(comfy.__path__))).parent / "nodes.py"  # comfy may be a namespace package
        spec = importlib.util.spec_from_file_location("comfyui_core_nodes", nodes_py)
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_core_nodes"] = module
        spec.loader.exec_module(module)
    return sys.modules["comfyui_core_nodes"]


def real_core_nodes(names=REAL_CORE) -> dict:
    """The classes of these core nodes (KSampler, EasyCache, ...) in the real ComfyUI on sys.path
    (COMFYUI_PATH), for execute's `core`. A node this ComfyUI does not have raises ImportError."""
    import importlib

    def module(name):
        return comfyui_nodes_module() if name == "nodes" else importlib.import_module(name)

    return {name: getattr(module(REAL_CORE[name][0]), REAL_CORE[name][1]) for name in names}


def make_small(api: dict, args) -> dict:
    """The tiny checkpoint ('tiny' in models/DropletVideo/) at the small sizes of the flags."""
    # width, height, frames (and fps) sit on the conditioning nodes (Image Encode, Empty Conditioning).
    overrides = {"model_folder": "tiny", "precision": "fp32", "width": args.width, "height": args.height,
                 "frames": args.frames, "steps": args.steps}
    core = {"ImageScale": {"width": args.width, "height": args.height}, "ImageFromBatch": {"length": args.frames},
            "KSampler": {"steps": args.steps}}
    for node in api.values():
        if node["class_type"].startswith("DropletVideo"):
            node["inputs"].update({k: v for k, v in overrides.items() if k in node["inputs"]})
        node["inputs"].update(core.get(node["class_type"], {}))
    return api


def demo(args) -> None:
    pack = load_pack(stub=True)
    import folder_paths

    from droplet_core.tiny import ensure_tiny_checkpoint

    ensure_tiny_checkpoint(Path(folder_paths.models_dir) / "DropletVideo" / "tiny")
    api = make_small(ui_to_api(json.loads(Path(args.workflow).read_text()), object_info(pack)), args)
    execute(api, pack, demo_core_nodes(Path(args.out), args.width, args.height))


# A real ComfyUI server -----------------------------------------------------------------------------------

def _request(url: str, payload=None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')}") from error


def submit(server: str, workflow: dict, args) -> dict:
    server = server.rstrip("/")
    api = ui_to_api(workflow, _request(f"{server}/object_info"))
    if args.small:
        api = make_small(api, args)
    prompt_id = _request(f"{server}/prompt", {"prompt": api, "client_id": str(uuid.uuid4())})["prompt_id"]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        history = _request(f"{server}/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            if entry.get("status", {}).get("status_str") == "error":
                raise SystemExit(f"prompt {prompt_id} failed: {json.dumps(entry['status'], indent=1)}")
            return entry.get("outputs", {})
        time.sleep(2)
    raise SystemExit(f"prompt {prompt_id} did not finish within {args.timeout:.0f} s (still queued or running).")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workflow", nargs="?", default=str(ROOT / "example_workflows" / "droplet_image_to_video.json"))
    p.add_argument("--demo", action="store_true", help="run the graph headless on the tiny model (ComfyUI stand-in)")
    p.add_argument("--server", help="a running ComfyUI, e.g. http://127.0.0.1:8188")
    p.add_argument("--timeout", type=float, default=3600, help="--server: seconds to wait for the outputs")
    p.add_argument("--small", action="store_true", help="--server: use the tiny model ('tiny' in "
                   "models/DropletVideo/) and the sizes below, as --demo does")
    p.add_argument("--out", default="droplet_demo.mp4", help="--demo: the video file to write")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=13)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    if args.demo:
        demo(args)
    elif args.server:
        print(json.dumps(submit(args.server, json.loads(Path(args.workflow).read_text()), args), indent=1))
    else:
        print(json.dumps(ui_to_api(json.loads(Path(args.workflow).read_text()), object_info(load_pack())), indent=1))


if __name__ == "__main__":
    main()
