"""Benchmark (not a test): the one GPU check. What this pack can only learn on a GPU, measured in
one command of at most ~5 minutes on one H100/H200 (docs/benchmarks.md, "GPU check", has the
device call, the carried wheels and the figures):

1. cuda_vs_cpu: the tiny checkpoint's transformer, one forward on CUDA and on the CPU (fp32);
2. engine: the release-size transformer (COGVIDEOX_5B_CLASS_TRANSFORMER, random weights) at 672x384x85
   (22 latent frames, 226 text tokens, CFG batch 2): seconds per step and peak VRAM in bf16 and
   with the pack's on-the-fly fp8 blocks (droplet_core/fp8.py);
3. attention: sdpa against SageAttention (reported absent where the wheel is not there);
4. block_swap: half the blocks streamed (droplet_core/offload);
5. engine_capped: bf16 and fp8 under a 12 GiB cap, with the offload planner's block swap;
6. comfy_path: the native MODEL (the pack's loader) under comfy.model_management, bf16;
7. quant: each format of the host's QUANT_ALGOS, written by the pack's writer and read back by its
   loader (ComfyUI's mixed-precision Linears), fully loaded;
8. quant_capped: the same under a 12 GiB cap (ComfyUI's partial loading);
9. comfy_dynamic: the native MODEL again with ComfyUI's dynamic VRAM (comfy-aimdo), if it starts.

The JSON report is rewritten after every stage (and every format), so a run cut off at its time
limit still reports what it measured; stages that would start after --budget-s are reported as
skipped. At the end a short text table is printed.

    python bench/gpu_check.py --comfyui /path/to/ComfyUI --out report.json
    python bench/gpu_check.py --dry-run [--comfyui ...]   # CPU, small sizes: every stage's code runs

--dry-run is the same stages at a small size (two 256-wide blocks of the medium model, 1x4x4 latents)
on the CPU; stages that need CUDA run their CPU part and say "skipped: no CUDA" for the rest.
Random weights: the speeds and memory are the release's shapes, not its outputs.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER  # noqa: E402
from droplet_core.tiny import MEDIUM  # noqa: E402
from gpu_check_engine import ENGINE_STAGES  # noqa: E402
from gpu_check_comfy import COMFY_STAGES  # noqa: E402

# The priorities first (a run cut off by its budget has measured those): formats, then the cap.
ORDER = ("cuda_vs_cpu", "engine", "comfy_path", "quant", "engine_capped", "quant_capped", "attention", "block_swap",
         "comfy_dynamic")
# The release's defaults: 672x384x85 is 84x48 latents x 22 latent frames; CFG batches 2.
RELEASE_RUN = dict(config=COGVIDEOX_5B_CLASS_TRANSFORMER, frames=22, height=48, width=84, text_tokens=226, batch=2,
                   warm=1, timed=2, cap_gib=12.0)
DRY_RUN = dict(config=replace(MEDIUM["transformer"], num_attention_heads=4, num_layers=2), frames=1, height=4,
               width=4, text_tokens=4, batch=2, warm=1, timed=1, cap_gib=0.05)


class Report:
    """The JSON report, written again after every change."""

    def __init__(self, path: Path, run: dict, device: str, budget_s: float):
        self.path, self.started, self.budget_s = path, time.monotonic(), budget_s
        config = run["config"]
        self.data = {"device": device_name(device), "torch": torch.__version__, "python": sys.version.split()[0],
                     "run": {k: v for k, v in run.items() if k != "config"},
                     "config": {"heads": config.num_attention_heads, "head_dim": config.attention_head_dim,
                                "layers": config.num_layers, "text_dim": config.text_embed_dim,
                                "in_channels": config.in_channels},
                     "stages": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def time_left(self) -> float:
        return self.budget_s - self.elapsed()

    def set(self, stage: str, key: str, value) -> None:
        self.data["stages"].setdefault(stage, {})[key] = value
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def table(report: dict) -> str:
    """One line per measured setting: stage, setting, s/step, peak VRAM GiB, note."""
    lines = [f"{'stage':14s} {'setting':30s} {'s/step':>8s} {'peak GiB':>9s}  note"]
    for stage, rows in report["stages"].items():
        for setting, row in rows.items():
            if isinstance(row, dict):
                step, peak = row.get("s_per_step"), row.get("peak_gib")
                note = row.get("note") or row.get("error") or row.get("skipped") or ""
                lines.append(f"{stage:14s} {setting:30s} {_num(step, 8, 3)} {_num(peak, 9, 2)}  {note}"[:160])
            else:
                lines.append(f"{stage:14s} {setting:30s} {'':8s} {'':9s}  {row}"[:160])
    return "\n".join(lines)


def _num(value, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if isinstance(value, (int, float)) else " " * width


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, small sizes: every stage's code path, quickly")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="a ComfyUI checkout (default: $COMFYUI_PATH) for the ComfyUI and quant stages")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report, rewritten after each stage")
    p.add_argument("--budget-s", type=float, default=285.0, help="no stage starts after this many seconds")
    p.add_argument("--stage", action="append", choices=ORDER, help="run only these stages (default: all, in order)")
    p.add_argument("--format", action="append", help="quant stages: only these formats (default: all the host's)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    run = DRY_RUN if args.dry_run else RELEASE_RUN
    report = Report(Path(args.out), run, device, args.budget_s)
    report.set("setup", "comfyui", args.comfyui or "none")
    stages = {name: {**ENGINE_STAGES, **COMFY_STAGES}[name] for name in ORDER}
    context = {"device": device, "run": run, "comfyui": args.comfyui, "formats": args.format}
    for name, stage in stages.items():
        if args.stage and name not in args.stage:
            continue
        if report.time_left() <= 0:
            report.set(name, "skipped", f"time budget ({args.budget_s:.0f} s) spent")
            continue
        started = time.monotonic()
        try:
            stage(report, name, context)
        except Exception as error:  # one stage's failure is a finding; the others still run
            report.set(name, "error", f"{type(error).__name__}: {error}"[:500])
        report.set(name, "stage_s", round(time.monotonic() - started, 1))
    print(table(report.data))
    print(f"report: {args.out} ({report.elapsed():.0f} s)")
    return report.data


if __name__ == "__main__":
    main()
