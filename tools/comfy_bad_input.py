"""The bad-input table: what a user sees in a real ComfyUI when a file or a widget is wrong, and
whether the server still runs the next graph.

    python tools/comfy_bad_input.py --server http://127.0.0.1:8188 [--cases a,b] --json out.json
    python tools/comfy_bad_input.py --list                                  # the cases
    python tools/comfy_bad_input.py --merge v033=out_v033.json jan26=out_jan26.json   # docs/bad_input.md's table

Run it on the machine of the server: a case writes its bad file under --models (the folder the
server reads through extra_model_paths.yaml), named bad_*, and removes it afterwards. Each case
queues an API prompt (a bundled workflow converted with tools/run_workflow.py's ui_to_api and the
server's /object_info, at 64x64, 5 frames, 2 steps, then edited), waits on /history, and records
what the browser shows: the execution_error (node_type, exception_type, exception_message) or
the HTTP 400 validation body of POST /prompt. Then it queues a good small graph (droplet_image_to_video.json,
a new seed) and records that it succeeds. A case passes when the error comes from the expected
node, is a ValueError/FileNotFoundError whose message matches the case's patterns and none of the
raw library messages, and the next graph runs. Prints a markdown table; exit 1 if a case fails.
"""

import argparse
import io
import json
import pickle
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
from comfy_free_rss import override, request  # noqa: E402 (tools/ is not a package)
from run_workflow import ui_to_api  # noqa: E402

SMALL = {"width": 64, "height": 64, "frames": 5, "length": 5, "steps": 2}
WEIGHTS = "diffusion_pytorch_model.safetensors"
CLEAR_TYPES = ("ValueError", "FileNotFoundError")
# Library messages a user should never have to decode.
RAW = ("incomplete metadata", "not fully covered", "expanded size of the tensor", "size mismatch for",
       "Error while deserializing", "HeaderTooLarge", "InvalidHeader", "NoneType", "has no attribute",
       "index out of range", "Weights only load failed", "Sizes of tensors must match", "must match the size of tensor")
MARKER = Path(tempfile.gettempdir()) / "droplet_bad_input_unpickled"  # appears only if someone unpickles the bad .bin


# Talking to the server ----------------------------------------------------------------------------

def queue(server: str, api: dict, timeout: float) -> dict:
    """POSTs the prompt; {"status": success|error|interrupted|rejected|timeout, ...} once it has ended."""
    start = time.monotonic()
    try:
        prompt_id = request(f"{server}/prompt", {"prompt": api, "client_id": str(uuid.uuid4())})["prompt_id"]
    except urllib.error.HTTPError as error:
        return {"status": "rejected", **rejection(error.read().decode(errors="replace")),
                "seconds": round(time.monotonic() - start, 1)}
    return wait(server, prompt_id, start, timeout)


def wait(server: str, prompt_id: str, start: float, timeout: float) -> dict:
    while time.monotonic() - start < timeout:
        try:
            entry = request(f"{server}/history/{prompt_id}").get(prompt_id)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            entry = None  # a busy server can miss a poll
        if entry and entry.get("status", {}).get("completed") is not None:
            return {**outcome(entry), "prompt_id": prompt_id, "seconds": round(time.monotonic() - start, 1)}
        time.sleep(1)
    return {"status": "timeout", "message": f"not finished within {timeout:.0f} s", "prompt_id": prompt_id,
            "seconds": round(time.monotonic() - start, 1)}


def outcome(entry: dict) -> dict:
    """What the browser shows for a finished prompt: its execution_error / execution_interrupted."""
    status = entry.get("status", {})
    messages = dict((kind, data) for kind, data in status.get("messages", []))
    if "execution_error" in messages:
        data = messages["execution_error"]
        return {"status": "error", "node_type": data.get("node_type"), "exception_type": data.get("exception_type"),
                "message": str(data.get("exception_message", "")).strip()}
    if "execution_interrupted" in messages:
        return {"status": "interrupted", "node_type": messages["execution_interrupted"].get("node_type"),
                "message": "Processing interrupted"}
    return {"status": status.get("status_str", "unknown"), "outputs": entry.get("outputs", {})}


def rejection(body: str) -> dict:
    """The HTTP 400 of POST /prompt: the message and each node's validation errors, as the page lists them."""
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        return {"message": body[:2000]}
    error = answer.get("error", {})
    parts = [f"{error.get('message', '')} {error.get('details', '')}".strip()]
    nodes = answer.get("node_errors", {}) or {}
    for info in nodes.values():
        parts += [f"{info.get('class_type')}: {e.get('message')}: {e.get('details')}" for e in info.get("errors", [])]
    types = [info.get("class_type") for info in nodes.values()]
    return {"node_type": types[0] if types else None, "exception_type": error.get("type"), "message": "; ".join(parts)}


def image_arrays(server: str, outputs: dict):
    """The SaveImage pictures of a finished prompt, as float arrays (fetched through /view)."""
    import numpy
    from PIL import Image
    arrays = []
    for node_output in outputs.values():
        for image in node_output.get("images", []):
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            with urllib.request.urlopen(f"{server}/view?{query}", timeout=120) as response:
                arrays.append(numpy.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=float))
    return numpy.stack(arrays) / 255 if arrays else None


# Bad files ----------------------------------------------------------------------------------------

@dataclass
class Context:
    server: str
    models: Path
    object_info: dict
    timeout: float
    seed: int
    log: Optional[Path] = None  # the server's log, for the warnings that never reach the browser
    created: list = field(default_factory=list)

    def new(self, relative: str) -> Path:
        """A path under the models folder for a bad file or folder, removed after the case."""
        path = self.models / relative
        assert path.name.startswith("bad_") and not path.exists(), path
        self.created.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        self.created.clear()

    def tiny(self) -> Path:
        return (self.models / "DropletVideo" / "DropletVideo-V1.0-weights").resolve()


def safetensors_shapes(path: Path) -> dict:
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def release_copy(ctx: Context, name: str, skip=()) -> Path:
    """models/DropletVideo/<name>/: the tiny release folder, linked, with a copy of transformer/ to damage."""
    folder, tiny = ctx.new(f"DropletVideo/{name}"), ctx.tiny()
    folder.mkdir()
    for entry in tiny.iterdir():
        if entry.name not in ("transformer", *skip):
            (folder / entry.name).symlink_to(entry)
    shutil.copytree(tiny / "transformer", folder / "transformer")
    return folder


def write_lora(path: Path, factors: dict, style: str = "peft") -> None:
    """{layer: (down, up)} as diffusers/peft keys, or as SD kohya keys with alpha."""
    import torch
    from safetensors.torch import save_file
    tensors = {}
    for name, (down, up) in factors.items():
        if style == "peft":
            tensors.update({f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up})
        else:
            tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                            f"{name}.alpha": torch.tensor(4.0)})
    save_file(tensors, str(path))


def lora_factors(ctx: Context, rank: int = 4, widen: int = 1, nan: bool = False) -> dict:
    """Random factors for every Linear of the tiny transformer's blocks (widen: for a bigger model)."""
    import torch
    generator = torch.Generator().manual_seed(0)
    shapes = safetensors_shapes(ctx.tiny() / "transformer" / WEIGHTS)
    factors = {key[:-len(".weight")]: (torch.randn(rank, shape[1] * widen, generator=generator) * 0.1,
                                       torch.randn(shape[0] * widen, rank, generator=generator) * 0.1)
               for key, shape in shapes.items()
               if key.startswith("transformer_blocks.") and key.endswith(".weight") and len(shape) == 2}
    if nan:
        factors["transformer_blocks.0.attn1.to_q"][1][3, 1] = float("nan")
    return factors


class Unpickled:
    """Unpickling this creates MARKER (a stand-in for the code a malicious pickle would run)."""

    def __reduce__(self):
        return open, (str(MARKER), "w")


I2V, LORA = "droplet_image_to_video.json", "droplet_lora.json"
LOADER, LORA_LOADER, ENCODE, SAMPLER = ("DropletVideoModelLoader", "DropletVideoLoraLoader", "DropletVideoImageEncode",
                                        "DropletVideoSampler")


# Graphs -------------------------------------------------------------------------------------------

def graph(ctx: Context, workflow: str, seed: Optional[int] = None, small: dict = SMALL) -> dict:
    api = override(ui_to_api(json.loads((ROOT / "example_workflows" / workflow).read_text()), ctx.object_info), dict(small))
    return override(api, {"seed": ctx.seed if seed is None else seed, "noise_seed": ctx.seed})


def node(api: dict, class_type: str) -> dict:
    """The inputs of the graph's node of this type."""
    found = [n["inputs"] for n in api.values() if n["class_type"] == class_type]
    assert len(found) == 1, f"{len(found)} {class_type} nodes"
    return found[0]


def node_id(api: dict, class_type: str) -> str:
    return next(i for i, n in api.items() if n["class_type"] == class_type)


def setter(workflow: str, class_type: str, **values) -> Callable:
    def edit(ctx):
        api = graph(ctx, workflow)
        node(api, class_type).update(values)
        return api
    return edit


def save_images(api: dict, prefix: str) -> dict:
    """The VAE decode's frames to SaveImage instead of the video nodes (pixels to compare)."""
    for key in [i for i, n in api.items() if n["class_type"] in ("CreateVideo", "SaveVideo")]:
        del api[key]
    api["901"] = {"class_type": "SaveImage", "inputs": {"images": [node_id(api, "DropletVideoVAEDecode"), 0],
                                                        "filename_prefix": prefix}}
    return api


def core_latent(target: str, workflow: str = "droplet_image_to_video.json", socket: str = "latent") -> Callable:
    """Core EmptyLatentImage (a 4-D image latent) into `target`'s latent input."""
    def edit(ctx):
        api = graph(ctx, workflow)
        api["900"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
        node(api, target)[socket] = ["900", 0]
        return api
    return edit


# Cases --------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    what: str                     # what the user does
    edit: Callable                # ctx -> API prompt (after `prepare`)
    expect: str = "error"         # error | rejected | success | custom
    node: Optional[str] = None    # the node the error must come from
    patterns: Tuple[str, ...] = ()  # regexes the shown message must match (case-insensitive)
    prepare: Optional[Callable] = None  # ctx -> None: writes the bad files
    run: Optional[Callable] = None      # ctx -> result, for cases that are not one prompt


def truncate_transformer(ctx):
    weights = release_copy(ctx, "bad_truncated") / "transformer" / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 1000])


def wrong_heads(ctx):
    config_file = release_copy(ctx, "bad_heads") / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_attention_heads"] *= 2
    config_file.write_text(json.dumps(config))


def corrupt_header(ctx):
    weights = release_copy(ctx, "bad_header") / "transformer" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00\xff" * 16  # the JSON header's start overwritten
    weights.write_bytes(bytes(data))


def pickle_transformer(ctx):
    transformer = release_copy(ctx, "bad_pickle") / "transformer"
    (transformer / WEIGHTS).unlink()
    (transformer / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"weight": Unpickled()}))


def no_config(ctx):
    (release_copy(ctx, "bad_no_config") / "transformer" / "config.json").unlink()


def transformer_as_vae(ctx):
    shutil.copytree(ctx.tiny() / "transformer", ctx.new("vae/bad_transformer_as_vae"))


def t5_without_tokenizer(ctx):
    folder = ctx.new("text_encoders/bad_no_tokenizer")
    folder.mkdir()
    for entry in (ctx.tiny() / "text_encoder").iterdir():
        (folder / entry.name).symlink_to(entry)


def lora_file(name: str, **kwargs) -> Callable:
    return lambda ctx: write_lora(ctx.new(f"loras/{name}"), lora_factors(ctx, **kwargs))


def sd_lora(ctx):
    names = [f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_{x}" for x in "qkv"]
    import torch
    write_lora(ctx.new("loras/bad_sd_keys.safetensors"),
               {n: (torch.randn(4, 320) * 0.1, torch.randn(320, 4) * 0.1) for n in names}, style="kohya")


def remove_start_image(ctx):
    api = graph(ctx, "droplet_start_and_end_frame.json")
    del node(api, "DropletVideoImageEncode")["start_image"]
    return api


def long_prompt(ctx):
    api = graph(ctx, "droplet_image_to_video.json")
    node(api, "DropletVideoTextEncode").update(
        prompt=" ".join(["A panda plays a guitar in a bamboo forest, the camera slowly moving to the left."] * 150),
        max_tokens=1024)
    return api


def interrupt(ctx) -> dict:
    """A 128x128, 13-frame, 1000-step graph interrupted once the sampler has taken a few steps."""
    import websocket
    api = graph(ctx, "droplet_image_to_video.json", small={**SMALL, "width": 128, "height": 128, "frames": 13, "steps": 1000})
    sampler = node_id(api, "DropletVideoSampler")
    client = str(uuid.uuid4())
    socket = websocket.create_connection(f"ws{ctx.server[4:]}/ws?clientId={client}", timeout=ctx.timeout)
    start = time.monotonic()
    try:
        prompt_id = request(f"{ctx.server}/prompt", {"prompt": api, "client_id": client})["prompt_id"]
        while True:
            message = socket.recv()
            if isinstance(message, str):
                data = json.loads(message)
                if (data["type"] == "progress" and data["data"].get("node") == sampler
                        and data["data"]["value"] >= 3):
                    break
    finally:
        socket.close()
    step = data["data"]
    asked = time.monotonic()
    request(f"{ctx.server}/interrupt", {"prompt_id": prompt_id})
    result = wait(ctx.server, prompt_id, start, ctx.timeout)
    result["message"] = (f"{result.get('message', result['status'])} at step {step['value']}/{step['max']}, "
                         f"{time.monotonic() - asked:.1f} s after POST /interrupt")
    return result


def lora_strengths(ctx) -> dict:
    """The bundled LoRA at 1.0, 0.5 and 0, same seed: all succeed and the pictures differ."""
    pictures, seconds = {}, 0.0
    for strength in (1.0, 0.5, 0.0):
        api = graph(ctx, "droplet_lora.json")
        node(api, "DropletVideoLoraLoader")["strength"] = strength
        result, pictures[strength] = pictures_of(ctx, api, f"bad_input/lora_{strength}")
        seconds += result["seconds"]
        if pictures[strength] is None:
            return {**result, "message": f"strength {strength}: {result.get('message', result['status'])}",
                    "seconds": seconds}
    pairs = ((1.0, 0.5), (0.5, 0.0), (1.0, 0.0))
    diff = {f"{a} vs {b}": float(abs(pictures[a] - pictures[b]).mean()) for a, b in pairs}
    problems = [f"identical output for {pair}" for pair, d in diff.items() if d == 0]
    problems += [f"all-black output at strength {s}" for s, p in pictures.items() if not p.mean() > 0.01]
    text = ", ".join(f"{pair}: mean |diff| {d:.4f}" for pair, d in diff.items())
    return {"status": "wrong" if problems else "success", "message": "; ".join(problems + [text]),
            "seconds": round(seconds, 1)}


def core_lora(lora_name: str, workflow: str = "droplet_image_to_video.json") -> Callable:
    """Core Load LoRA (model only) between the DropletVideo loader and everything that takes its MODEL."""
    def edit(ctx):
        api = graph(ctx, workflow)
        loader = node_id(api, LOADER)
        for other in api.values():
            for name, value in other["inputs"].items():
                if value == [loader, 0]:
                    other["inputs"][name] = ["902", 0]
        api["902"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": [loader, 0], "lora_name": lora_name, "strength_model": 1.0}}
        return api
    return edit


def kohya_nan_lora(ctx):
    factors = lora_factors(ctx, nan=True)
    write_lora(ctx.new("loras/bad_kohya_nan.safetensors"),
               {"lora_unet_" + name.replace(".", "_"): f for name, f in factors.items()}, style="kohya")


def pictures_of(ctx, api: dict, prefix: str):
    """(result, frames as floats) of the graph with its frames saved as pictures."""
    result = queue(ctx.server, save_images(api, prefix), ctx.timeout)
    return result, (image_arrays(ctx.server, result.pop("outputs")) if result["status"] == "success" else None)


def core_lora_run(workflow: str, lora_name: str, compare: bool) -> Callable:
    """A core-loaded LoRA: a NaN LoRA must not end in a black 'success'; a good one must change the frames."""
    def run(ctx):
        result, frames = pictures_of(ctx, core_lora(lora_name, workflow)(ctx), "bad_input/core_lora")
        if frames is None:
            return result
        problems, notes = [], [f"frames mean {frames.mean():.3f}"]
        if not frames.mean() > 0.01:
            problems.append("all-black frames")
        if compare:
            plain, without = pictures_of(ctx, graph(ctx, workflow), "bad_input/core_lora_off")
            if without is None:
                return {**plain, "message": f"without the LoRA: {plain.get('message')}"}
            diff = float(abs(frames - without).mean())
            notes.append(f"mean |diff| vs no LoRA {diff:.4f}")
            if diff == 0:
                problems.append("the LoRA changed nothing (not applied)")
        return {**result, "status": "wrong" if problems else "success", "message": "; ".join(problems + notes)}
    return run


def hunyuan_latent(ctx):
    """A 16-channel video latent of another size (core EmptyHunyuanLatentVideo 128x128) into the sampler."""
    api = graph(ctx, "droplet_image_to_video.json")
    api["903"] = {"class_type": "EmptyHunyuanLatentVideo",
                  "inputs": {"width": 128, "height": 128, "length": 5, "batch_size": 1}}
    node(api, SAMPLER)["latent"] = ["903", 0]
    return api


def long_video_with_model(ctx):
    api = graph(ctx, "droplet_image_to_video.json")
    node(api, ENCODE)["frames"] = 169
    node(api, SAMPLER)["long_video"] = True
    return api


def no_text_encoder(ctx):
    api = graph(ctx, "droplet_image_to_video.json")
    del node(api, "DropletVideoTextEncode")["text_encoder"]
    return api


CASES = [
    Case("truncated_transformer", "transformer .safetensors cut short (header intact, last 1000 bytes missing)",
         setter(I2V, LOADER, model_folder="bad_truncated"), node=LOADER,
         patterns=(r"bad_truncated/transformer/diffusion_pytorch_model\.safetensors", "incomplete", "re-download"),
         prepare=truncate_transformer),
    Case("heads_mismatch", "transformer/config.json num_attention_heads doubled (weights unchanged)",
         setter(I2V, LOADER, model_folder="bad_heads"), node=LOADER,
         patterns=("num_attention_heads", "does not match the weights", "config.json"), prepare=wrong_heads),
    Case("lora_nan", "LoRA holding a NaN", setter(LORA, LORA_LOADER, lora_name="bad_nan.safetensors"),
         node=LORA_LOADER, patterns=(r"bad_nan\.safetensors", "NaN"),
         prepare=lora_file("bad_nan.safetensors", nan=True)),
    Case("lora_sd_keys", "SD-style LoRA (lora_unet_down_blocks_...) on DropletVideo",
         setter(LORA, LORA_LOADER, lora_name="bad_sd_keys.safetensors"), node=LORA_LOADER,
         patterns=(r"bad_sd_keys\.safetensors", "match no layer"), prepare=sd_lora),
    Case("frames_89", "frames 89 on the tiny model (table holds 85), Image Encode's model input connected",
         setter(I2V, ENCODE, frames=89), node=ENCODE, patterns=("89 frames", "positional table", "at most 85")),
    Case("corrupt_header", "transformer .safetensors with a corrupt JSON header",
         setter(I2V, LOADER, model_folder="bad_header"), node=LOADER,
         patterns=(r"bad_header/transformer/diffusion_pytorch_model\.safetensors", "re-download"),
         prepare=corrupt_header),
    Case("html_as_lora", "an HTML page saved as a LoRA .safetensors (wrong download link)",
         setter(LORA, LORA_LOADER, lora_name="bad_html.safetensors"), node=LORA_LOADER,
         patterns=(r"bad_html\.safetensors", "not a safetensors file"),
         prepare=lambda ctx: ctx.new("loras/bad_html.safetensors").write_text(
             "<!DOCTYPE html><html><body>Sign in to download</body></html>\n" * 20)),
    Case("pickle_transformer", "transformer/ holding only diffusion_pytorch_model.bin (pickle that would "
         "create a marker file)", setter(I2V, LOADER, model_folder="bad_pickle"), node=LOADER,
         patterns=(r"diffusion_pytorch_model\.bin", "pickle", r"\.safetensors only"), prepare=pickle_transformer),
    Case("pickle_lora", "a pickle LoRA bad_pickle.ckpt in loras/ (not listed; a workflow naming it is queued)",
         setter(LORA, LORA_LOADER, lora_name="bad_pickle.ckpt"), expect="rejected", node=LORA_LOADER,
         patterns=("bad_pickle.ckpt", "not in"),
         prepare=lambda ctx: ctx.new("loras/bad_pickle.ckpt").write_bytes(pickle.dumps({"w": Unpickled()}))),
    Case("lora_other_size", "LoRA for a model twice as wide (right names, wrong shapes)",
         setter(LORA, LORA_LOADER, lora_name="bad_other_size.safetensors"), node=LORA_LOADER,
         patterns=(r"bad_other_size\.safetensors", "another size"),
         prepare=lora_file("bad_other_size.safetensors", widen=2)),
    Case("full_model_as_lora", "the transformer weights put in loras/ and picked as a LoRA",
         setter(LORA, LORA_LOADER, lora_name="bad_full_model.safetensors"), node=LORA_LOADER,
         patterns=(r"bad_full_model\.safetensors", "match no layer"),
         prepare=lambda ctx: shutil.copy(ctx.tiny() / "transformer" / WEIGHTS,
                                         ctx.new("loras/bad_full_model.safetensors"))),
    Case("width_500", "width 500 (not a multiple of 16)", setter(I2V, ENCODE, width=500), node=ENCODE,
         patterns=("500", "multiple of 16", "496")),
    Case("end_without_start", "end_image connected, start_image not", remove_start_image, node=ENCODE,
         patterns=("end_image needs a start_image",)),
    Case("core_latent_sampler", "core Empty Latent Image (4-D) into DropletVideo Sampler", core_latent(SAMPLER),
         node=SAMPLER, patterns=(r"\[1, 4, 8, 8\]|\(1, 4, 8, 8\)", "video latent")),
    Case("core_latent_decode", "core Empty Latent Image (4-D) into DropletVideo VAE Decode",
         core_latent("DropletVideoVAEDecode"), node="DropletVideoVAEDecode", patterns=("video LATENT",)),
    Case("denoise_empty", "denoise 0.5 on the empty latent of Image Encode", setter(I2V, SAMPLER, denoise=0.5),
         node=SAMPLER, patterns=("denoise 0.5", "empty")),
    Case("window_overlap", "long_video with window_overlap 22 = the window (22 latent frames)",
         setter("droplet_long_video.json", SAMPLER, window_overlap=22), node=SAMPLER,
         patterns=("window_overlap 22", "window")),
    Case("fps_sweep_text", "FPS Sweep fps_values '4,fast,16'",
         setter("droplet_fps_sweep.json", "DropletVideoFPSSweep", fps_values="4,fast,16"),
         node="DropletVideoFPSSweep", patterns=("'fast' is not a whole number",)),
    Case("fps_sweep_range", "FPS Sweep fps_values '8,120'",
         setter("droplet_fps_sweep.json", "DropletVideoFPSSweep", fps_values="8,120"),
         node="DropletVideoFPSSweep", patterns=("120 is outside 1..60",)),
    Case("interrupt", "Cancel (POST /interrupt) while the sampler runs (128x128, 13 frames, 1000 steps)",
         None, expect="interrupted", node=SAMPLER, run=interrupt),
    Case("lora_strengths", "the bundled LoRA at strength 1.0, then 0.5, then 0 (same seed)", None,
         expect="success", run=lora_strengths),
    Case("missing_folder", "model_folder that does not exist (workflow from someone else)",
         setter(I2V, LOADER, model_folder="bad_missing"), expect="rejected", node=LOADER,
         patterns=("bad_missing", "not in")),
    Case("missing_config", "release folder without transformer/config.json",
         setter(I2V, LOADER, model_folder="bad_no_config"), expect="success_or_error", node=LOADER,
         patterns=("config.json",), prepare=no_config),
    Case("missing_text_encoder", "release folder without text_encoder/",
         setter(I2V, LOADER, model_folder="bad_no_t5"), node=LOADER, patterns=("bad_no_t5/text_encoder",),
         prepare=lambda ctx: release_copy(ctx, "bad_no_t5", skip=("text_encoder",))),
    Case("vae_is_transformer", "split loaders: the transformer folder put in vae/ and picked as the VAE",
         setter("droplet_split_loaders.json", "DropletVideoVAELoader", vae_name="bad_transformer_as_vae"),
         node="DropletVideoVAELoader", patterns=("bad_transformer_as_vae",), prepare=transformer_as_vae),
    Case("t5_no_tokenizer", "split loaders: a T5 folder without the tokenizer files",
         setter("droplet_split_loaders.json", "DropletVideoT5Loader", text_encoder_name="bad_no_tokenizer"),
         node="DropletVideoT5Loader", patterns=("tokenizer", "spiece.model"), prepare=t5_without_tokenizer),
    Case("long_prompt", "a 2,400-word prompt with max_tokens 1024 (the widget's maximum)", long_prompt,
         expect="success"),
    Case("max_tokens_1", "max_tokens 1", setter(I2V, "DropletVideoTextEncode", max_tokens=1), expect="success"),
    Case("core_lora_nan", "the NaN LoRA (kohya keys) through core Load LoRA (model only) into DropletVideo Sampler",
         core_lora("bad_kohya_nan.safetensors"), node=SAMPLER, patterns=("NaN",), prepare=kohya_nan_lora),
    Case("core_lora_nan_ksampler", "the NaN LoRA (kohya keys) through core Load LoRA into core KSampler",
         None, node="DropletVideoVAEDecode", patterns=("NaN/inf", "black video"), prepare=kohya_nan_lora,
         run=core_lora_run("droplet_core_ksampler.json", "bad_kohya_nan.safetensors", compare=False)),
    Case("core_lora_peft", "the bundled LoRA (diffusers/peft keys) through core Load LoRA (model only): a known "
         "limit (README): core maps transformer.* names only for the models it ships, so nothing is applied",
         None, expect="wrong", run=core_lora_run(I2V, "droplet_lora.safetensors", compare=True)),
    Case("frames_89_t2v", "frames 89 in the text-to-video workflow (Empty Conditioning has no model input)",
         setter("droplet_text_to_video.json", "DropletVideoEmptyConditioning", frames=89), node=SAMPLER,
         patterns=("23 latent frames", "positional table")),
    Case("long_video_model_connected", "long_video on and frames 169 in the i2v workflow (Image Encode's model "
         "input still connected)", long_video_with_model, node=ENCODE,
         patterns=("169 frames", r"unconnect|disconnect|leave .*model")),
    Case("latent_size_mismatch", "core Empty HunyuanVideo Latent (16 ch, 128x128) into the sampler, Image Encode "
         "at 64x64", hunyuan_latent, node=SAMPLER, patterns=("does not fit the sampled latent", "same width, height")),
    Case("ksampler_core_latent", "core Empty Latent Image (4-D) into core KSampler with the DropletVideo MODEL",
         core_latent("KSampler", "droplet_core_ksampler.json", "latent_image"), node="KSampler",
         patterns=("does not fit the sampled latent",)),
    Case("text_encoder_unconnected", "DropletVideo Text Encode with neither text_encoder nor clip connected",
         no_text_encoder, node="DropletVideoTextEncode", patterns=("text_encoder", "clip")),
]


# Running ------------------------------------------------------------------------------------------

def judge(case: Case, result: dict, following: dict) -> list:
    """What is wrong with this row (empty: the case ends well)."""
    problems = []
    status, message = result["status"], result.get("message", "")
    wanted = {"success_or_error": ("success", "error")}.get(case.expect, (case.expect,))
    if status not in wanted:
        problems.append(f"status {status}, expected {case.expect}")
    if status in ("error", "rejected", "interrupted") and case.node and result.get("node_type") != case.node:
        problems.append(f"from {result.get('node_type')}, expected {case.node}")
    if status == "error" and result.get("exception_type") not in CLEAR_TYPES:
        problems.append(f"exception type {result.get('exception_type')}")
    if status in ("error", "rejected"):
        problems += [f"message lacks /{p}/" for p in case.patterns if not re.search(p, message, re.I)]
    problems += [f"raw message {raw!r}" for raw in RAW if raw.lower() in message.lower()]
    if MARKER.exists():
        problems.append(f"UNPICKLED: {MARKER} was created")
    if following["status"] != "success":
        problems.append(f"next graph: {following['status']} {following.get('message', '')[:300]}")
    return problems


# ComfyUI logs the first for model folders that are symlinks; the second is the 400 the browser shows anyway.
LOG_NOISE = ("doesn't link anywhere", "invalid prompt")
# ComfyUI 0.8 logs bare messages (no level name): the warnings the cases are known to cause.
LOG_WARNINGS = ("WARNING", "lora key not loaded", "prompt truncated", "has no config: inferred")


def log_warnings(log: Optional[Path], offset: int) -> list:
    """The warnings the server logged since `offset` (each once, ANSI colours removed)."""
    if log is None:
        return []
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in text.splitlines()
             if any(mark in line for mark in LOG_WARNINGS)]
    return list(dict.fromkeys(line for line in lines if not any(noise in line for noise in LOG_NOISE)))


def run_case(ctx: Context, case: Case) -> dict:
    ctx.seed += 1
    offset = ctx.log.stat().st_size if ctx.log else 0
    try:
        if case.prepare:
            case.prepare(ctx)
        result = case.run(ctx) if case.run else queue(ctx.server, case.edit(ctx), ctx.timeout)
    except Exception as error:  # a broken case must not stop the table (nor leave bad files behind)
        result = {"status": "tool error", "message": f"{type(error).__name__}: {error}", "seconds": 0}
    finally:
        ctx.cleanup()
    warnings = log_warnings(ctx.log, offset)
    ctx.seed += 1
    try:
        following = queue(ctx.server, graph(ctx, I2V), ctx.timeout)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:  # the server died or hangs
        following = {"status": "server unreachable", "message": str(error), "seconds": 0}
    problems = judge(case, result, following)
    result.pop("outputs", None)
    return {"case": case.name, "what": case.what, **result, "expected_node": case.node,
            "node_ok": case.node is None or result.get("node_type") == case.node, "log_warnings": warnings[:8],
            "log_warning_count": len(warnings),
            "next_status": following["status"], "next_seconds": following["seconds"],
            "problems": problems, "verdict": "ok" if not problems else "FAIL"}


def without_folder(row: dict, models: Path) -> dict:
    """The row with the models folder's path written $MODELS: the table is the same on any machine."""
    folder = str(models.resolve())
    mark = lambda text: text.replace(folder, "$MODELS").replace(str(models), "$MODELS")  # noqa: E731
    return {**row, "message": mark(row.get("message", "")), "log_warnings": [mark(w) for w in row["log_warnings"]]}


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(row: dict) -> str:
    kind = f"{row['status']}" + (f" in {row['node_type']}" if row.get("node_type") else "")
    exception = f"{row['exception_type']}: " if row.get("exception_type") and row["status"] == "error" else ""
    return f"**{kind}**: {shorten(exception + row.get('message', ''))}" if row.get("message") else f"**{kind}**"


def table(rows: list) -> str:
    lines = ["| case | what the user does | status + message shown in the browser | expected node? | s | "
             "next graph | verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['what']} | {shown(r)} | {'yes' if r['node_ok'] else 'NO'} | {r['seconds']} | "
                     f"{r['next_status']} ({r['next_seconds']} s) | {r['verdict']}"
                     f"{': ' + shorten('; '.join(r['problems']), 200) if r['problems'] else ''} |")
    return "\n".join(lines + log_notes({"log": {"cases": rows}}))


def merged_table(runs: dict) -> str:
    """One row per case, one column per server (--merge label=file ...)."""
    labels = list(runs)
    by_case = {label: {r["case"]: r for r in runs[label]["cases"]} for label in labels}
    names = list(dict.fromkeys(r["case"] for label in labels for r in runs[label]["cases"]))
    head = ["case", "what the user does"] + [f"{label} (ComfyUI {runs[label]['comfyui_version']})" for label in labels]
    lines = ["| " + " | ".join(head + ["next graph ran?", "verdict"]) + " |", "|---" * (len(head) + 2) + "|"]
    for name in names:
        rows = [by_case[label].get(name) for label in labels]
        what = next(r["what"] for r in rows if r)
        cells = [f"{shown(r)} ({r['seconds']} s)" if r else "not run" for r in rows]
        cells[1:] = [f"same as {labels[0]} ({r['seconds']} s)" if r and rows[0] and shown(r) == shown(rows[0]) else cell
                     for r, cell in zip(rows[1:], cells[1:])]
        nexts = ", ".join(f"{label}: {'yes' if r['next_status'] == 'success' else 'NO'}"
                          for label, r in zip(labels, rows) if r)
        verdicts = ", ".join(f"{label}: {r['verdict']}" + (f" ({shorten('; '.join(r['problems']), 150)})"
                                                             if r["problems"] else "")
                             for label, r in zip(labels, rows) if r)
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + f" | {nexts} | {verdicts} |")
    return "\n".join(lines + log_notes(runs))


def log_notes(runs: dict) -> list:
    """The server-log warnings of each case (what only the terminal shows), when --log was given."""
    notes = []
    for label, run in runs.items():
        for row in run["cases"]:
            warnings = [w for w in row.get("log_warnings", []) if not any(noise in w for noise in LOG_NOISE)]
            if warnings:
                more = row.get("log_warning_count", len(warnings)) - (len(row["log_warnings"]) - len(warnings)) - 2
                notes.append(f"- {label}, {row['case']}: " + "; ".join(f"`{shorten(w, 160)}`" for w in warnings[:2])
                             + (f" (+{more} more)" if more > 0 else ""))
    return ["", "Warnings in the server log only (the browser does not show them):", *notes] if notes else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--cases", help="comma-separated case names (default: all; see --list)")
    p.add_argument("--models", type=Path, help="the models folder the server reads (bad files go there, named "
                   "bad_*; shown as $MODELS in the table); needed to run cases")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--log", type=Path, help="the server's log file: record the warnings each case logs")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for one prompt")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--merge", nargs="+", metavar="LABEL=JSON", help="print one table of several runs and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{c.name}: {c.what}" for c in CASES))
        return 0
    if args.merge:
        runs = {spec.split("=", 1)[0]: json.loads(Path(spec.split("=", 1)[1]).read_text()) for spec in args.merge}
        print(merged_table(runs))
        return 0
    chosen = args.cases.split(",") if args.cases else [c.name for c in CASES]
    unknown = set(chosen) - {c.name for c in CASES}
    if unknown:
        p.error(f"unknown case(s) {', '.join(sorted(unknown))}; see --list")
    if args.models is None:
        p.error("--models is needed to run cases: the models folder of the server (e.g. ComfyUI/models)")
    server = args.server.rstrip("/")
    version = request(f"{server}/system_stats")["system"]["comfyui_version"]
    ctx = Context(server, args.models, request(f"{server}/object_info"), args.timeout, seed=int(time.time()) % 10**6,
                  log=args.log)
    MARKER.unlink(missing_ok=True)
    start, rows = time.monotonic(), []
    for case in (c for c in CASES if c.name in chosen):
        rows.append(without_folder(run_case(ctx, case), args.models))
        print(f"[{rows[-1]['verdict']}] {case.name}: {shown(rows[-1])}", file=sys.stderr, flush=True)
    report = {"server": server, "comfyui_version": version, "seconds": round(time.monotonic() - start, 1),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "cases": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"ComfyUI {version} at {server}, {report['seconds']} s\n\n{table(rows)}")
    return 0 if all(r["verdict"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
