"""Benchmark (not a test): peak RSS and wall time of 1, 2 and 3 joined segments (CPU, medium model).

Each run is the CLI (`python -m droplet_core --segments plan.json`) in a fresh process, so its
peak RSS is its own; the counts run in turn, round after round (1 2 3 1 2 3 ...), and medians are
printed with the ratios to one segment. The goal: 3 segments peak at most 1.1x one segment (memory
does not grow with segments) and take about 3x its generation time.

    python bench/extend.py [--steps 4] [--repeats 1] [--overlap 5]
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from engine import run_measured  # noqa: E402 (bench/ is not a package)

WIDTH, HEIGHT, FRAMES = 320, 192, 13  # the medium model's positional table: 13 frames
IMAGE = str(ROOT / "tests" / "goldens" / "start.png")
PLAN = [{"prompt": "A panda walks through a bamboo forest.", "fps": 8},
        {"prompt": "The panda sits down and eats bamboo.", "fps": 16},
        {"prompt": "The panda falls asleep, the camera pulls back.", "fps": 4}]


def command(ckpt: Path, plan: Path, args) -> list:
    return [sys.executable, "-m", "droplet_core", "--ckpt", str(ckpt), "--ref_img", IMAGE, "--segments", str(plan),
            "--overlap", str(args.overlap), "--width", str(WIDTH), "--height", str(HEIGHT), "--video_length",
            str(FRAMES), "--num_inference_steps", str(args.steps), "--device", "cpu", "--dtype", "fp32",
            "--out", str(plan.with_suffix(".mp4"))]


def generate_seconds(out: str) -> float:
    """The CLI's 'generate N s' (wall time less loading)."""
    return float(out.split("generate ")[1].split(" s")[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--overlap", type=int, default=5)
    args = p.parse_args(argv)
    from droplet_core.tiny import ensure_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ensure_tiny_checkpoint(Path(tmp) / "medium", "medium")
        plans = {}
        for count in (1, 2, 3):
            plans[count] = Path(tmp) / f"plan{count}.json"
            plans[count].write_text(json.dumps(PLAN[:count]))
        rows = {count: [] for count in plans}
        for _ in range(args.repeats):
            for count, plan in plans.items():
                out, wall, rss = run_measured(command(ckpt, plan, args))
                rows[count].append((wall, generate_seconds(out), rss))
    medians = {count: [statistics.median(c) for c in zip(*r)] for count, r in rows.items()}
    base = medians[1]
    print(f"[medium model, {WIDTH}x{HEIGHT}x{FRAMES} per segment, overlap {args.overlap}, {args.steps} steps, "
          f"CFG 6, CPU fp32, median of {args.repeats}]")
    print(f"{'segments':>8s} {'frames':>7s} {'wall s':>8s} {'generate s':>11s} {'x 1 seg':>8s} {'peak RSS MiB':>13s} "
          f"{'x 1 seg':>8s}")
    for count, (wall, generate, rss) in medians.items():
        frames = count * FRAMES - (count - 1) * args.overlap
        print(f"{count:8d} {frames:7d} {wall:8.1f} {generate:11.1f} {generate / base[1]:8.2f} {rss:13.0f} "
              f"{rss / base[2]:8.3f}")


if __name__ == "__main__":
    main()
