"""bench/gpu_check.py's ComfyUI stages: the native MODEL through the pack's loader under
comfy.model_management (bf16, then with dynamic VRAM), and each of the host's quantized formats
(written by nodes/quantized_writer.py, read back by the pack's loader) fully loaded and under a
12 GiB cap (ComfyUI's partial loading: its reserved VRAM raised so that only the cap is free to it).

The random release-size transformer is written once as a bf16 file; each format's file is made
from it by the pack's writer (on the GPU: comfy-kitchen's CPU code takes minutes a GiB for 4-bit)."""

import importlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from droplet_core.configs import config_to_dict
from gpu_check_engine import GIB, call_inputs, capped, free_memory, random_transformer, timed_steps

ROOT = Path(__file__).resolve().parents[1]
# Users' first picks first: a run cut off by its budget has measured those.
FORMAT_ORDER = ("float8_e4m3fn", "nvfp4", "int8_tensorwise", "mxfp8", "convrot_w4a4", "asym_w4a8_int8", "float8_e5m2")


def comfy_pack(ctx):
    """The pack imported as ComfyUI imports it, on the ComfyUI at ctx['comfyui'] (once); None without one."""
    if "pack" not in ctx:
        ctx["pack"] = None
        if ctx["comfyui"]:
            sys.path[:0] = [ctx["comfyui"], str(ROOT / "tools")]
            import comfy.cli_args

            comfy.cli_args.args.cpu = ctx["device"] == "cpu"
            import run_workflow

            ctx["pack"] = run_workflow.load_pack(stub=False)
    return ctx["pack"]


def pack_module(ctx, name: str):
    return importlib.import_module(comfy_pack(ctx).__name__ + "." + name)


def source_file(ctx) -> Path:
    """The random release-size transformer as one bf16 .safetensors, config in its metadata (once)."""
    if "source" not in ctx:
        folder = Path(tempfile.mkdtemp(prefix="droplet_gpu_check_"))
        model = random_transformer(ctx["run"]["config"], ctx["device"])
        state = {k: v.cpu().contiguous() for k, v in model.state_dict().items()}
        del model
        free_memory()
        config = config_to_dict(ctx["run"]["config"], "DropletVideoTransformer3DModel")
        ctx["source"] = folder / "random_bf16.safetensors"
        save_file(state, str(ctx["source"]), metadata={"config": json.dumps(config)})
    return ctx["source"]


def timing_scale(ctx):
    """The MODEL's latent scale for the timed runs (its value changes no timing): 5B-class VAEs' 0.7."""
    return pack_module(ctx, "nodes.latent_scale").ModelScale(0.7, "the GPU check (timing only)")


def native_steps(ctx, path: Path, cap: bool) -> dict:
    """The pack's loader on `path`, comfy.model_management.load_models_gpu (partially under the cap),
    then timed calls of the native diffusion model."""
    import comfy.model_management as mm

    loading = pack_module(ctx, "nodes.native.loading")
    device, run = ctx["device"], ctx["run"]
    patcher = loading.load_native_model(path, torch.bfloat16, timing_scale(ctx))
    model = patcher.model.diffusion_model
    inputs = call_inputs(model.config, run, patcher.load_device)
    shape = (run["batch"], model.config.noise_channels, run["frames"], run["height"], run["width"])
    reserved = mm.EXTRA_RESERVED_VRAM
    try:
        if cap and device == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            mm.EXTRA_RESERVED_VRAM = max(0, total - int(run["cap_gib"] * GIB))
        with capped(run, device) if cap else _nothing():
            mm.load_models_gpu([patcher], memory_required=patcher.model.memory_required(shape))
            loaded = patcher.loaded_size() / GIB
            row = timed_steps(lambda: model.predict(**inputs), run, device)
    finally:
        mm.EXTRA_RESERVED_VRAM = reserved
        mm.unload_all_models()
        del patcher, model
        free_memory()
    return {**row, "note": f"{loaded:.2f} GiB of weights loaded on {device}"}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def needs_comfy(report, name, ctx) -> bool:
    if comfy_pack(ctx) is None:
        report.set(name, "skipped", "no ComfyUI (--comfyui or COMFYUI_PATH)")
        return False
    return True


def stage_comfy_path(report, name, ctx) -> None:
    if needs_comfy(report, name, ctx):
        import comfy.memory_management

        report.set(name, "dynamic_vram", bool(comfy.memory_management.aimdo_enabled))
        report.set(name, "bf16", native_steps(ctx, source_file(ctx), cap=False))


def quantized_file(ctx, fmt: str) -> Path:
    """source_file written in `fmt` by the pack's writer (once per format)."""
    out = source_file(ctx).with_name(f"random_{fmt}.safetensors")
    if not out.exists():
        writer = pack_module(ctx, "nodes.quantized_writer")
        plan = pack_module(ctx, "droplet_core.quant_plan")
        config, files, _, shapes = writer.read_source(source_file(ctx))
        tensors, layers, kept = writer.quantize_tensors(writer.source_tensors(files), shapes, fmt,
                                                        device=ctx["device"])
        # write_quantized's metadata, but no sha256 over an 11 GB file of random weights (~30 s a format)
        metadata = plan.quant_metadata(config, "DropletVideo", fmt, layers, kept, files, "random weights, not hashed",
                                       writer.host_name())
        save_file(tensors, str(out), metadata=metadata)
    return out


def formats(ctx) -> list:
    offered = pack_module(ctx, "nodes.quantized_writer").host_formats()
    ordered = [f for f in FORMAT_ORDER if f in offered] + [f for f in offered if f not in FORMAT_ORDER]
    return [f for f in ordered if not ctx["formats"] or f in ctx["formats"]]


def quant_stage(report, name, ctx, cap: bool) -> None:
    if not needs_comfy(report, name, ctx):
        return
    offered = formats(ctx)
    report.set(name, "formats", offered or "none: comfy-kitchen is missing")
    if cap:
        report.set(name, "bf16", _measured(lambda: native_steps(ctx, source_file(ctx), cap=True)))
    for fmt in offered:
        if report.time_left() <= 0:
            report.set(name, fmt, {"skipped": "time budget spent"})
            continue
        row = _measured(lambda: native_steps(ctx, quantized_file(ctx, fmt), cap))
        size = quantized_file(ctx, fmt).stat().st_size / GIB if quantized_file(ctx, fmt).exists() else None
        report.set(name, fmt, {**row, "file_gib": size and round(size, 2)})


def _measured(measure) -> dict:
    try:
        return measure()
    except Exception as error:  # one format's failure is a finding; the next one still runs
        return {"error": f"{type(error).__name__}: {error}"[:300]}


def stage_quant(report, name, ctx) -> None:
    quant_stage(report, name, ctx, cap=False)


def stage_quant_capped(report, name, ctx) -> None:
    quant_stage(report, name, ctx, cap=True)


def stage_comfy_dynamic(report, name, ctx) -> None:
    """ComfyUI's dynamic VRAM, enabled as its main.py does at start (comfy-aimdo on every device)."""
    if not needs_comfy(report, name, ctx):
        return
    if ctx["device"] != "cuda":
        report.set(name, "skipped", "no CUDA")
        return
    if importlib.util.find_spec("comfy_aimdo") is None:
        report.set(name, "skipped", "comfy-aimdo is not installed")
        return
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control

    if not comfy_aimdo.control.init_devices(d.index for d in mm.get_all_torch_devices()):
        report.set(name, "skipped", "comfy-aimdo did not start on this device")
        return
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    patcher = pack_module(ctx, "nodes.native.loading").load_native_model(
        source_file(ctx), torch.bfloat16, timing_scale(ctx))
    report.set(name, "pack_patcher", type(patcher).__name__)  # whether the pack's MODEL takes part in it
    del patcher
    report.set(name, "bf16", _measured(lambda: native_steps(ctx, source_file(ctx), cap=False)))
    report.set(name, "bf16_capped", _measured(lambda: native_steps(ctx, source_file(ctx), cap=True)))


COMFY_STAGES = {"comfy_path": stage_comfy_path, "quant": stage_quant, "quant_capped": stage_quant_capped,
                "comfy_dynamic": stage_comfy_dynamic}
