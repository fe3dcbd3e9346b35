"""The core patch-node table (docs/core_patches.md): which of ComfyUI's model patches change a
DropletVideo video, measured on a real ComfyUI server, not written by hand.

    python tools/comfy_patch_table.py --server http://127.0.0.1:8188 --out docs/core_patches.md \\
        [--json raw.json] [--nodes APG,TCFG] [--model-folder DropletVideo-V1.0-weights]

For each patch node of PATCHES (its defaults from the server's /object_info, with the SETTINGS
below so that a patch that runs has something to change), the tool queues the tiny image-to-
video graph (the bundled droplet_core_ksampler.json / droplet_image_to_video.json at 64x64, 5 frames,
2 steps, fp32, the MODEL through the patch node, the sampler's LATENT saved with core SaveLatent)
once with core KSampler and once with the DropletVideo Sampler, and compares the latents with the
unpatched run of the same sampler. Verdicts (classify): acts (the latents differ), no effect
(equal within TOLERANCE of their scale), refused (a ValueError / NotImplementedError naming what
to do, or the server's validation), fails (any other error, or a timeout), absent (not in this
ComfyUI). The models folder must hold the tiny checkpoint as --model-folder, and the input folder
example.png (both are the bundled workflows' names). Exit 1 when the unpatched graphs fail.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
from run_workflow import input_specs, is_widget, ui_to_api  # noqa: E402 (tools/ is not a package)

SMALL = {"width": 64, "height": 64, "frames": 5, "steps": 2, "precision": "fp32"}
SAMPLERS = {"KSampler": "droplet_core_ksampler.json", "DropletVideoSampler": "droplet_image_to_video.json"}
DROPPED = ("DropletVideoVAEDecode", "CreateVideo", "SaveVideo")  # the latents are what is compared
# Relative to the unpatched latents' largest magnitude. A patch that only changes how core batches
# the model calls (an extra cond, a compiled graph) moves the fp32 latents by about 1e-4 of it here.
TOLERANCE = 1e-3
REFUSALS = ("ValueError", "NotImplementedError", "FileNotFoundError")
VERDICTS = ("acts", "no effect", "refused", "fails", "absent")
PATCH_ID, SAVE_ID, EMPTY_IDS = "900", "901", ("902", "903")

# The video-relevant patch nodes (ComfyUI 0.33's advanced/guidance, model/patch, experimental,
# advanced/debug, guiders and unet-patch categories) and the settings they run with: the
# defaults, except where a default does nothing on a 2-step, 5-frame, 2-block run.
PATCHES = {
    "APG": {}, "CFGZeroStar": {}, "CFGNorm": {}, "TCFG": {}, "NAGuidance": {},
    "RescaleCFG": {}, "RenormCFG": {}, "Mahiro": {}, "FreSca": {"freq_cutoff": 2},
    "SelfAttentionGuidance": {}, "PerturbedAttentionGuidance": {}, "PerpNeg": {},
    "SkipLayerGuidanceDiT": {"double_layers": "1", "single_layers": "1", "start_percent": 0.0, "end_percent": 1.0},
    "SkipLayerGuidanceDiTSimple": {"double_layers": "1", "single_layers": "1"},
    "VideoLinearCFGGuidance": {}, "VideoTriangleCFGGuidance": {},
    "EasyCache": {"reuse_threshold": 3.0, "start_percent": 0.0}, "LazyCache": {"reuse_threshold": 3.0, "start_percent": 0.0},
    "ModelSamplingDiscrete": {"sampling": "eps"}, "ModelSamplingContinuousV": {}, "ModelSamplingSD3": {},
    "ModelNoiseScale": {"noise_scale": 2.0}, "TemporalScoreRescaling": {}, "Epsilon Scaling": {"scaling_factor": 1.05},
    "ModelAttentionBackend": {}, "ModelComputeDtype": {"dtype": "bf16"}, "TorchCompileModel": {},
    "ScaleROPE": {"scale_t": 2.0, "scale_x": 2.0}, "ContextWindowsManual": {"context_length": 1, "context_overlap": 0,
                                                                            "dim": 2},
    "FreeU_V2": {}, "DifferentialDiffusion": {}, "UNetSelfAttentionMultiply": {"v": 2.0},
    "UNetCrossAttentionMultiply": {"v": 2.0}, "TomePatchModel": {},
}
# Patches that fail exactly so on ComfyUI's own CogVideoX model too (read in core 0.33; ModelNoiseScale
# also run on a tiny core CogVideoX_I2V, tests/test_nodes_core_patch_gaps.py): shown where a verdict is "fails".
FAILS_ON_CORE_COGVIDEOX = {
    "ModelNoiseScale": "fails the same on core's own CogVideoX: it needs a flow-matching model sampling "
                       "(set_parameters); this is a v-prediction model",
    "FreeU_V2": "fails the same on core's own CogVideoX: it reads unet_config['model_channels'], which only UNet "
                "models have; a DiT has no output-block skips to scale",
}
# Why a patch cannot change this model: shown only where the measured verdict is "no effect".
REASONS = {
    "FreeU_V2": "scales a UNet's output-block skip connections (output block patches); a DiT has none",
    "TomePatchModel": "merges tokens through UNet attn1 patches, which DropletVideo's blocks never call",
    "SelfAttentionGuidance": "blurs through a UNet's middle-block attention (attn1 output patch); a DiT has no middle block",
    "PerturbedAttentionGuidance": "replaces the UNet middle block's self-attention; a DiT has no middle block",
    "DifferentialDiffusion": "acts only with a denoise mask (inpainting latents); the image-to-video graph has none",
    "ScaleROPE": "scales ComfyUI's RoPE options (Flux, Wan, Qwen models); DropletVideo builds its own 3-D rotary table",
    "ModelAttentionBackend": "the only backend offered here is PyTorch attention, the SDPA DropletVideo already uses",
    "NAGuidance": "works through the attention-output patch (attn1_output_patch), which DropletVideo's blocks never call",
    "UNetCrossAttentionMultiply": "scales cross-attention (attn2) weights; DropletVideo's joint attention has no attn2",
    "EasyCache": "reuses steps whose input barely changed; 2 steps leave nothing to reuse",
    "LazyCache": "reuses steps whose input barely changed; 2 steps leave nothing to reuse",
}


# Classification (pure: recorded results in, verdicts out) -------------------------------------------

def classify(baseline: dict, record: dict, tolerance: float = TOLERANCE) -> tuple:
    """(verdict, detail) of one patched run against the unpatched run of the same sampler. A record
    is {"status": success|error|rejected|timeout|absent, "exception_type", "message", "max_diff",
    "scale"} (max_diff: the largest absolute latent difference to the baseline; None when the
    shapes differ)."""
    status = record["status"]
    if status == "absent":
        return "absent", "not in this ComfyUI"
    if baseline["status"] != "success":
        return "fails", f"the unpatched graph failed: {baseline.get('message', '')}"
    if status == "success":
        if record.get("max_diff") is None:
            return "acts", "the latent's shape changed"
        relative = record["max_diff"] / max(record.get("scale") or 0.0, 1e-12)
        detail = f"max |Δ| {relative:.2g} of the scale" if relative else ""
        return ("acts" if relative > tolerance else "no effect"), detail
    message = " ".join(str(record.get("message", "")).split())
    if status == "rejected" or record.get("exception_type") in REFUSALS:
        return "refused", message
    if status == "timeout":
        return "fails", message or "timed out"
    return "fails", f"{record.get('exception_type')}: {message}"


def counts(rows: list) -> dict:
    """{sampler: {verdict: count}} of rendered rows."""
    table = {sampler: dict.fromkeys(VERDICTS, 0) for sampler in SAMPLERS}
    for row in rows:
        for sampler in SAMPLERS:
            table[sampler][row[sampler][0]] += 1
    return table


def render(records: dict, meta: dict) -> str:
    """docs/core_patches.md from {"baseline": {sampler: record}, "patches": {node: {"category", "settings",
    sampler: record}}} and meta {"command", "comfyui_version", "commit", "date"}."""
    rows = []
    for node, found in records["patches"].items():
        row = {"node": node, "category": found.get("category") or "", "settings": found.get("settings", {})}
        for sampler in SAMPLERS:
            row[sampler] = classify(records["baseline"][sampler], found[sampler])
        rows.append(row)
    summary = counts(rows)
    lines = [
        "# Core patch nodes on DropletVideo", "",
        "Generated by `tools/comfy_patch_table.py`; do not edit by hand. Rerun it after a change to the "
        "sampler, the model or ComfyUI:", "", "```", meta["command"], "```", "",
        f"ComfyUI {meta['comfyui_version']}, pack commit {meta['commit']}, {meta['date']}. Each patch node sits "
        "between the DropletVideo loader's MODEL and the sampler of the bundled image-to-video graph (tiny "
        "checkpoint, 64x64, 5 frames, 2 steps, cfg 6, fp32); its latents are compared with the unpatched run of "
        "the same sampler. **acts**: they differ; **no effect**: equal (the reason, where known); **refused**: "
        "the graph stops with a message saying what to do; **fails**: any other error (a bug to fix); "
        "**absent**: not in this ComfyUI.", "",
        "| sampler | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS),
    ]
    lines += [f"| {sampler} | " + " | ".join(str(summary[sampler][v]) for v in VERDICTS) + " |" for sampler in SAMPLERS]
    lines += ["", "| patch node | category | settings | core KSampler | DropletVideo Sampler | why no effect |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [cell(row[sampler]) for sampler in SAMPLERS]
        why = why_no_effect(row["node"], row["KSampler"][0], row["DropletVideoSampler"][0])
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "defaults"
        lines.append(f"| {row['node']} | {row['category']} | {settings} | {cells[0]} | {cells[1]} | {why} |")
    return "\n".join(lines) + "\n"


def why_no_effect(node: str, core: str, droplet: str) -> str:
    """The reason column: the model's (REASONS) where neither sampler changed, the pack sampler's where
    only it ran as if the patch were not there; for a failure, whether core's own CogVideoX fails alike."""
    if "fails" in (core, droplet):
        return FAILS_ON_CORE_COGVIDEOX.get(node, "a failure to fix: not known to fail on core's own CogVideoX")
    if droplet == "no effect" and core != "no effect":
        return "the DropletVideo Sampler ran without it" + ("; core KSampler applies it" if core == "acts" else "")
    if "no effect" in (core, droplet):
        return REASONS.get(node, "not recorded")
    return ""


def cell(verdict: tuple) -> str:
    name, detail = verdict
    detail = detail.replace("|", "\\|")
    return f"**{name}**" + (f": {detail[:240]}" if detail else "")


# Talking to the server ---------------------------------------------------------------------------

def request(url: str, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as response:
        body = response.read()
    return json.loads(body) if body.strip() else None


def run_prompt(server: str, api: dict, timeout: float) -> dict:
    """The finished prompt: {"status", ...} as classify reads it, plus "outputs" on success."""
    try:
        prompt_id = request(f"{server}/prompt", {"prompt": api, "client_id": str(uuid.uuid4())})["prompt_id"]
    except urllib.error.HTTPError as error:
        return {"status": "rejected", "message": error.read().decode(errors="replace")[:1000]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = request(f"{server}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            messages = dict(entry["status"].get("messages", []))
            if "execution_error" in messages:
                error = messages["execution_error"]
                return {"status": "error", "exception_type": error.get("exception_type"),
                        "message": str(error.get("exception_message", "")).strip(), "node_type": error.get("node_type")}
            return {"status": "success", "outputs": entry.get("outputs", {})}
        time.sleep(0.5)
    request(f"{server}/interrupt", {})
    return {"status": "timeout", "message": f"not finished within {timeout:.0f} s"}


def saved_latent(server: str, outputs: dict):
    """The SaveLatent file of a finished prompt, as a tensor (fetched through /view)."""
    from safetensors.torch import load
    item = outputs[SAVE_ID]["latents"][0]
    query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server}/view?{query}", timeout=120) as response:
        return load(response.read())["latent_tensor"].float()


# Graphs ------------------------------------------------------------------------------------------

def base_graph(object_info: dict, sampler: str, model_folder: str, prefix: str) -> dict:
    """The bundled graph of `sampler` at SMALL, its decode and video nodes replaced by SaveLatent."""
    api = ui_to_api(json.loads((ROOT / "example_workflows" / SAMPLERS[sampler]).read_text()), object_info)
    for node_id in [i for i, n in api.items() if n["class_type"] in DROPPED]:
        del api[node_id]
    for node in api.values():
        node["inputs"].update({k: v for k, v in {**SMALL, "model_folder": model_folder}.items()
                               if k in node["inputs"] and not isinstance(node["inputs"][k], list)})
    sampler_id = next(i for i, n in api.items() if n["class_type"] == sampler)
    api[SAVE_ID] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0], "filename_prefix": prefix}}
    return api


def widget_default(spec):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in options:
        return options["default"]
    choices = kind if isinstance(kind, list) else options.get("options", [])
    return choices[0] if choices else {"BOOLEAN": False, "STRING": ""}.get(kind, 0)


def empty_prompt(api: dict) -> list:
    """A link to the empty prompt with the graph's image and FPS conditions (PerpNeg's
    empty_conditioning): a second text encode ("") through a second Image Encode."""
    text_id, text = next((i, n) for i, n in api.items() if n["class_type"] == "DropletVideoTextEncode")
    encode = next(n for n in api.values() if n["class_type"] == "DropletVideoImageEncode")
    api[EMPTY_IDS[0]] = {"class_type": text["class_type"], "inputs": {
        **text["inputs"], "prompt": "", "negative_prompt": "", "append_quality_suffix": False}}
    api[EMPTY_IDS[1]] = {"class_type": encode["class_type"], "inputs": {
        **encode["inputs"], "positive": [EMPTY_IDS[0], 0], "negative": [EMPTY_IDS[0], 1]}}
    return [EMPTY_IDS[1], 0]


def with_patch(api: dict, sampler: str, node: str, definition: dict, settings: dict) -> dict:
    """`api` with `node` between the loader's MODEL and the sampler; a CONDITIONING input (PerpNeg's
    empty prompt) gets the empty prompt. ValueError for another required input."""
    api = json.loads(json.dumps(api))
    sampler_id = next(i for i, n in api.items() if n["class_type"] == sampler)
    inputs = {}
    for name, spec, optional in input_specs(definition):
        if is_widget(spec):
            inputs[name] = settings.get(name, widget_default(spec))
        elif spec[0] == "MODEL":
            inputs[name] = api[sampler_id]["inputs"]["model"]
        elif spec[0] == "CONDITIONING":
            inputs[name] = empty_prompt(api)
        elif not optional:
            raise ValueError(f"{node} needs a {spec[0]} input ({name}), which this tool does not provide")
    api[PATCH_ID] = {"class_type": node, "inputs": inputs}
    api[sampler_id]["inputs"]["model"] = [PATCH_ID, 0]
    return api


def measure(server: str, api: dict, baseline, timeout: float) -> tuple:
    """(record for classify, latent or None)."""
    outcome = run_prompt(server, api, timeout)
    if outcome["status"] != "success":
        return outcome, None
    latent = saved_latent(server, outcome["outputs"])
    record = {"status": "success", "max_diff": None, "scale": None}
    if baseline is not None and latent.shape == baseline.shape:
        record.update(max_diff=float((latent - baseline).abs().max()), scale=float(baseline.abs().max()))
    return record, latent


def collect(args, object_info: dict) -> dict:
    run_tag = uuid.uuid4().hex[:8]  # new SaveLatent prefixes: nothing is answered from ComfyUI's cache
    bases = {s: base_graph(object_info, s, args.model_folder, f"patch_table/{run_tag}_{s}") for s in SAMPLERS}
    records, latents = {"baseline": {}, "patches": {}}, {}
    for sampler, api in bases.items():
        records["baseline"][sampler], latents[sampler] = measure(args.server, api, None, args.timeout)
        print(f"unpatched {sampler}: {records['baseline'][sampler]['status']}", file=sys.stderr)
    for node in args.nodes:
        settings = PATCHES.get(node, {})
        definition = object_info.get(node)
        found = {"category": definition.get("category") if definition else None, "settings": settings}
        for sampler in SAMPLERS:
            if definition is None:
                found[sampler] = {"status": "absent"}
                continue
            try:
                api = with_patch(bases[sampler], sampler, node, definition, settings)
            except ValueError as error:
                found[sampler] = {"status": "rejected", "message": str(error)}
                continue
            found[sampler], _ = measure(args.server, api, latents[sampler], args.timeout)
            print(f"{node} / {sampler}: {classify(records['baseline'][sampler], found[sampler])}", file=sys.stderr)
        records["patches"][node] = found
    return records


def meta(args, argv) -> dict:
    stats = request(f"{args.server}/system_stats")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    command = "python tools/comfy_patch_table.py " + " ".join(argv)
    return {"command": command, "comfyui_version": stats.get("system", {}).get("comfyui_version", "unknown"),
            "commit": commit, "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--out", type=Path, help="the markdown table (docs/core_patches.md)")
    p.add_argument("--json", type=Path, help="also write the raw records")
    p.add_argument("--nodes", type=lambda s: s.split(","), default=list(PATCHES), help="comma-separated subset")
    p.add_argument("--model-folder", default="DropletVideo-V1.0-weights",
                   help="the tiny checkpoint's folder under the server's models/DropletVideo/")
    p.add_argument("--timeout", type=float, default=300, help="seconds per prompt")
    args = p.parse_args(argv)
    object_info = request(f"{args.server}/object_info")
    records = collect(args, object_info)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    text = render(records, meta(args, argv))
    if args.out:
        args.out.write_text(text)
    print(text)
    if any(r["status"] != "success" for r in records["baseline"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
