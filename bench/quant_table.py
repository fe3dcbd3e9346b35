"""Benchmark (not a test): what each of ComfyUI's quantized formats costs on the medium checkpoint,
on CPU, through the pack's nodes on a real ComfyUI; and which format the VRAM planner fits on
8/12/16/24 GB cards at the release's defaults. Prints one JSON document and the markdown tables
of docs/quantization.md.

    /path/to/comfy/python bench/quant_table.py --comfyui /path/to/ComfyUI [--out quant_table.json]

Per format (the medium transformer in bf16, the release's dtype, written by the pack's writer):
- file size, and the bytes a quantized weight takes (what the VRAM table scales to 5B with);
- peak RSS to load: VmHWM growth of a fresh process over the Transformer Loader call;
- one transformer forward's relative error against bf16 (fixed random inputs, t=500, fp32 compute), with the
  adaLN modulation Linears kept (the default) and, for MODULATION_FORMATS, quantized too (the
  decision in the docs);
- a short image-to-video run through the nodes (same seed, settings in tests/quant_files.py VIDEO,
  all computing in fp32 so only the weights' rounding differs): the decoded
  frames' RMSE and PSNR against the bf16 file's, and CPU seconds per step.
The medium checkpoint's weights are random (droplet_core/tiny.py), not the release's: the errors
are those of these weights' statistics, not a quality verdict on the released model.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS_GIB = (8, 12, 16, 24)
MODULATION_FORMATS = ("float8_e4m3fn", "nvfp4", "int8_tensorwise")
SETUPS = (("bf16", False), ("fp8", False), ("fp8", True))  # T5 weights, VAE decode tiled
T5_GIB = {"bf16": 9.1, "fp8": 5.7}  # the T5 loader's two weight formats (nodes/loader_common.py)


def setup(comfyui: str):
    sys.path[:0] = [comfyui, str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import run_workflow

    return run_workflow.load_pack(stub=False)


def run(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def register(models: Path):
    import folder_paths

    for name in ("diffusion_models", "DropletVideo", "loras"):
        (models / name).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(name, str(models / name), is_default=True)


def rss_of_load(comfyui: str, models: Path, name: str) -> float:
    """MiB the Transformer Loader adds to a fresh process's peak RSS."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT / 'bench')!r}); import quant_table as q; "
            f"q.print_load_rss({comfyui!r}, {str(models)!r}, {name!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["load_mib"]


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def print_load_rss(comfyui: str, models: str, name: str) -> None:
    pack = setup(comfyui)
    register(Path(models))
    before = vm_hwm_mib()
    run(pack, "DropletVideoTransformerLoader", transformer_name=name, precision="bf16")  # the release's
    print(json.dumps({"load_mib": round(vm_hwm_mib() - before, 1)}))


def relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def measure(comfyui: str) -> dict:
    pack = setup(comfyui)
    import importlib

    import torch
    from quant_files import (VIDEO, forward, forward_inputs, medium_release_file, quantized_file, short_video,
                             video_conditioning)

    writer = importlib.import_module(pack.__name__ + ".nodes.quantized_writer")
    models = Path(tempfile.mkdtemp(prefix="droplet_quant_"))
    register(models)
    release = medium_release_file(models)
    load = lambda name: run(pack, "DropletVideoTransformerLoader", transformer_name=name,  # noqa: E731
                            precision=VIDEO["precision"])[0]
    vae, conds = video_conditioning(pack)
    with torch.inference_mode():
        bf16 = load(release.name)
        inputs = forward_inputs(bf16)
        reference = forward(bf16, inputs, torch.float32)
        reference_frames, bf16_step = short_video(pack, bf16, vae, conds)
        del bf16
        rows = [{"format": "bf16 (source)", "file_mib": release.stat().st_size / 2**20,
                 "load_mib": rss_of_load(comfyui, models, release.name), "bytes_per_weight": 2.0,
                 "forward_error": 0.0, "forward_error_modulation": 0.0, "rmse": 0.0, "psnr_db": math.inf,
                 "s_per_step": bf16_step}]
        for fmt in writer.host_formats():
            name = quantized_file(writer, models, fmt, blocks=8)
            model = load(name)
            error = relative_error(forward(model, inputs, torch.float32), reference)
            frames, per_step = short_video(pack, model, vae, conds)
            del model
            error_mod = math.nan  # the adaLN measurement, on the formats that write fast on CPU
            if fmt in MODULATION_FORMATS:
                with_mod = quantized_file(writer, models, fmt, quantize_modulation=True, blocks=8)
                error_mod = relative_error(forward(load(with_mod), inputs, torch.float32), reference)
            rmse = float(((frames - reference_frames) ** 2).mean().sqrt())
            rows.append({"format": fmt, "file_mib": (models / "diffusion_models" / name).stat().st_size / 2**20,
                         "load_mib": rss_of_load(comfyui, models, name),
                         "bytes_per_weight": quantized_bytes_per_weight(models / "diffusion_models" / name),
                         "forward_error": error, "forward_error_modulation": error_mod, "rmse": rmse,
                         "psnr_db": 20 * math.log10(1 / rmse) if rmse else math.inf, "s_per_step": per_step})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"host": writer.host_name(), "video": VIDEO, "rows": rows, "vram": vram_table(rows)}


def quantized_bytes_per_weight(path: Path) -> float:
    """Bytes of the quantized layers' tensors (data and scales) per weight they stand for."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        layers = json.loads(handle.metadata()["_quantization_metadata"])["layers"]
        config = json.loads(handle.metadata()["config"])
        stored = sum(_nbytes(handle.get_slice(k)) for k in handle.keys()
                     if k.rpartition(".")[0] in layers and not k.endswith(".bias"))
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    weights = config["num_layers"] * 12 * inner * inner  # q, k, v, out (4 x dim^2) + feed-forward (2 x 4 x dim^2)
    return stored / weights


def _nbytes(tensor_slice) -> int:
    sizes = {"F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U8": 1, "I8": 1, "F32": 4, "BF16": 2, "F16": 2}
    return math.prod(tensor_slice.get_shape()) * sizes[tensor_slice.get_dtype()]


def vram_table(rows) -> list:
    """The offload planner's mode (droplet_core/offload/plan.py) for the release config at its
    defaults (672x384, 85 frames, CFG, bf16 activations) per format, card and T5 weight format."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, VaeConfig
    from droplet_core.offload.plan import ModelBytes, Workload, module_bytes, plan_offload
    from droplet_core.transformer import DropletVideoTransformer3DModel

    with torch.device("meta"):
        model = DropletVideoTransformer3DModel(COGVIDEOX_5B_CLASS_TRANSFORMER).to(torch.bfloat16)
        vae = AutoencoderKLCogVideoX(**VaeConfig().diffusers_kwargs())  # the CogVideoX VAE's shapes.to(torch.bfloat16)
    block = module_bytes(model.transformer_blocks[0])
    inner = COGVIDEOX_5B_CLASS_TRANSFORMER.inner_dim
    block_linear_weights = 12 * inner * inner
    other = module_bytes(model) - block * COGVIDEOX_5B_CLASS_TRANSFORMER.num_layers
    table = []
    for row in rows:
        quantized_block = block - block_linear_weights * (2 - row["bytes_per_weight"])
        for t5, tiled in SETUPS:
            sizes = ModelBytes(block=int(quantized_block), num_blocks=COGVIDEOX_5B_CLASS_TRANSFORMER.num_layers,
                               transformer_other=other, text_encoder=int(T5_GIB[t5] * 2**30), vae=module_bytes(vae),
                               largest_layer=int(inner * 4 * inner * 2))
            work = Workload(tiled_vae=tiled)
            plans = {card: plan_offload(card * 2**30, sizes, COGVIDEOX_5B_CLASS_TRANSFORMER, work) for card in CARDS_GIB}
            table.append({"format": row["format"], "t5": t5 + (", VAE tiled" if tiled else ""),
                          "transformer_gib": sizes.transformer / 2**30,
                          "plans": {card: (p.mode, p.blocks_on_device, p.needed_bytes / 2**30)
                                    for card, p in plans.items()}})
    return table


def markdown(result: dict) -> str:
    lines = ["| format | file (MiB) | bytes/weight | load peak RSS (MiB) | forward rel. error | "
             "same, adaLN quantized | video RMSE | video PSNR (dB) | CPU s/step |", "|" + "---|" * 9]
    for r in result["rows"]:
        lines.append(f"| {r['format']} | {r['file_mib']:.1f} | {r['bytes_per_weight']:.3f} | {r['load_mib']:.0f} | "
                     f"{r['forward_error']:.4f} | {r['forward_error_modulation']:.4f} | {r['rmse']:.4f} | "
                     f"{r['psnr_db']:.1f} | {r['s_per_step']:.2f} |")
    lines += ["", "| format | T5 | transformer (GiB) | " + " | ".join(f"{c} GB" for c in CARDS_GIB) + " |",
              "|" + "---|" * (3 + len(CARDS_GIB))]
    for v in result["vram"]:
        cells = [mode if mode != "block_swap" else f"block_swap {blocks}/42" for mode, blocks, _ in v["plans"].values()]
        lines.append(f"| {v['format']} | {v['t5']} | {v['transformer_gib']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--out", type=Path, default=Path("quant_table.json"))
    args = parser.parse_args()
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    result = measure(args.comfyui)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
