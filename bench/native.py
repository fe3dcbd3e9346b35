"""Benchmark (not a test): the native ComfyUI path against the engine's CLI and the official
pipeline on CPU, same checkpoint, same settings (image-to-video, fp32, CFG 6, DDIM).

- native: bench/native_run.py, the pack's nodes on the native MODEL (stand-in ComfyUI, or a
  real one with --comfyui: then in that ComfyUI's Python, beside the CLI in the same Python, so
  both use its torch);
- engine: `python -m droplet_core` (the CLI; the nodes ran this engine before the native MODEL);
- reference: bench/reference_run.py in the reference's environment.

The commands run in turn, round after round (A B C A B C ...), each in a fresh process, so a
machine whose speed drifts affects all alike; medians of wall time, seconds per step (between
step ends) and peak RSS are printed with the ratios to the reference and to the engine.

    python bench/native.py --preset tiny --preset medium --repeats 3 \\
        --reference ../DropletVideo --reference-python ../refvenv/bin/python \\
        [--comfyui /path/to/ComfyUI --comfyui-python /path/to/comfy/python]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from engine import run_measured  # noqa: E402 (bench/ is not a package)

SIZES = {"tiny": (128, 128, 13), "medium": (320, 192, 13)}
IMAGE = str(ROOT / "tests" / "goldens" / "start.png")
PROMPT = "A panda plays a guitar in a bamboo forest."


def commands(ckpt: Path, preset: str, args) -> dict:
    """{name: (argv, environment, how to read seconds per step from its stdout)}."""
    width, height, frames = (str(v) for v in SIZES[preset])
    size = ["--width", width, "--height", height]
    native = [str(ROOT / "bench" / "native_run.py"), "--models", str(ckpt.parent), "--model_folder", ckpt.name,
              *size, "--frames", frames, "--steps", str(args.steps)]
    cli = ["-m", "droplet_core", "--ckpt", str(ckpt), "--ref_img", IMAGE, "--fps", "8", "--prompt", PROMPT, *size,
           "--video_length", frames, "--num_inference_steps", str(args.steps),
           "--out", str(Path(tempfile.gettempdir()) / "droplet_bench.gif"),
           "--device", "cpu", "--dtype", "fp32"]
    runs = {
        "native (stand-in)": ([sys.executable, *native], None, json_step),
        "engine CLI": ([sys.executable, *cli], None, cli_step),
    }
    if args.comfyui:
        env = {**os.environ, "COMFYUI_PATH": args.comfyui}
        runs["native (real ComfyUI)"] = ([args.comfyui_python, *native], env, json_step)
        runs["engine CLI (ComfyUI's Python)"] = ([args.comfyui_python, *cli], None, cli_step)
    if args.reference:
        runs["reference"] = ([args.reference_python, str(ROOT / "bench" / "reference_run.py"), "--reference",
                              args.reference, "--ckpt", str(ckpt), "--ref_img", IMAGE, *size, "--video_length",
                              frames, "--steps", str(args.steps)], None, json_step)
    return runs


def json_step(out: str) -> float:
    return json.loads(out.strip().splitlines()[-1])["s_per_step"]


def cli_step(out: str) -> float:
    return float(out.split(" s/step")[0].rsplit(", ", 1)[-1])


def compare(preset: str, ckpt: Path, args) -> None:
    runs = commands(ckpt, preset, args)
    figures = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (argv, env, read_step) in runs.items():
            out, wall, rss = run_measured(argv, env=env)
            figures[name].append((wall, read_step(out), rss))
    medians = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in figures.items()}
    width, height, frames = SIZES[preset]
    print(f"\n[{preset}, {width}x{height}x{frames}, {args.steps} steps, CPU fp32, median of {args.repeats}]")
    print(f"{'path':32s} {'wall s':>8s} {'s/step':>8s} {'peak RSS MiB':>13s}   ratios to reference / to engine CLI")
    for name, (wall, step, rss) in medians.items():
        ratios = []
        for other in ("reference", "engine CLI"):
            if other in medians and other != name:
                base = medians[other]
                ratios.append(f"{other}: {wall / base[0]:.2f} / {step / base[1]:.2f} / {rss / base[2]:.2f}")
        print(f"{name:32s} {wall:8.2f} {step:8.4f} {rss:13.0f}   {'; '.join(ratios)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference", help="folder of the official DropletVideo code")
    p.add_argument("--reference-python", default=sys.executable, help="python of the reference's environment")
    p.add_argument("--comfyui", help="a ComfyUI checkout: also run the nodes in it")
    p.add_argument("--comfyui-python", default=sys.executable, help="that ComfyUI's python")
    args = p.parse_args()
    from droplet_core.tiny import ensure_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset or ["tiny", "medium"]:
            compare(preset, ensure_tiny_checkpoint(Path(tmp) / preset, preset), args)


if __name__ == "__main__":
    main()
