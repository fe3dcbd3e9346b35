"""Multi-process scaling (not a test): seconds per denoising step for 1 process vs N under torchrun.

Runs the CLI exactly as a user does: `python -m droplet_core` for 1 process, `torchrun
--nproc_per_node N -m droplet_core --parallel MODE` for N, and reads rank 0's summary line
(s/step is timed between step ends, so loading and encoding are not counted). On CPU the cores
are shared out (OMP_NUM_THREADS = cores // N), so 1 vs N compares the same machine; on CUDA each
rank has its own GPU. Then the tiled VAE decode (--tiled_vae) of random latents of the same size,
1 process vs N sharing the tiles (parallel/vae_decode.py), timed on rank 0 from a barrier.

    python bench/parallel.py                                   # medium model, CPU, 1 vs 2 (auto, sequence, cfg)
    python bench/parallel.py --ckpt /path/to/DropletVideo-V1.0-weights --device cuda --procs 1,2,4,8 \
        --width 672 --height 384 --frames 85 --steps 5
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cli(procs: int, mode: str, args, ckpt: Path, threads: int) -> float:
    """rank 0's seconds per step."""
    cli = ["-m", "droplet_core", "--ckpt", str(ckpt), "--ref_img", str(ROOT / "tests/goldens/start.png"),
           "--width", str(args.width), "--height", str(args.height), "--video_length", str(args.frames),
           "--num_inference_steps", str(args.steps), "--guidance_scale", str(args.guidance), "--device", args.device,
           "--out", str(Path(tempfile.mkdtemp()) / "bench.npz")]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               *cli, "--parallel", mode]
    else:
        cmd = [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    found = re.search(r"([0-9.]+) s/step", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return float(found.group(1))


def time_decode(procs: int, args, ckpt: Path, threads: int) -> float:
    """rank 0's seconds for the tiled decode, through this file's --decode_worker."""
    worker = [str(Path(__file__).resolve()), "--decode_worker", "--ckpt", str(ckpt), "--device", args.device,
              "--width", str(args.width), "--height", str(args.height), "--frames", str(args.frames),
              "--guidance", str(args.guidance)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    cmd = [sys.executable, *launcher, *worker]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                          text=True)
    found = re.search(r"decode ([0-9.]+) s", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return float(found.group(1))


def decode_worker(args) -> None:
    import torch
    import torch.distributed as dist
    from droplet_core import shapes
    from droplet_core.loading import load_vae
    from droplet_core.parallel import checkpoint_heads, start_parallel
    from droplet_core.pipeline import DTYPES
    from droplet_core.vae_ops import decode_to_frames

    run = start_parallel("auto", args.device, checkpoint_heads(args.ckpt), args.guidance)  # None alone
    device = run.device if run else torch.device(args.device)
    vae = load_vae(Path(args.ckpt) / "vae", DTYPES["bf16" if device.type == "cuda" else "fp32"]).to(device)
    latents = torch.randn(1, shapes.latent_frames(args.frames), 16, args.height // 8, args.width // 8,
                          generator=torch.Generator().manual_seed(0))
    if run:
        dist.barrier()
    started = time.perf_counter()
    frames = run.decode(vae, latents, tiled=True) if run else decode_to_frames(vae, latents, tiled=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if frames is not None:
        print(f"decode {time.perf_counter() - started:.3f} s")
    if run:
        run.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="medium", help="tiny, medium (built here, 8 heads) or a released folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated (1 is the baseline)")
    p.add_argument("--mode", action="append", help="parallel modes for N > 1 (default: auto, sequence, cfg)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--frames", type=int, default=13)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=6.0)
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads shared out among the ranks")
    p.add_argument("--decode_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.decode_worker:
        decode_worker(args)
        return 0

    from droplet_core.tiny import ensure_tiny_checkpoint
    ckpt = Path(args.ckpt)
    if args.ckpt in ("tiny", "medium"):
        ckpt = ensure_tiny_checkpoint(Path(tempfile.gettempdir()) / f"droplet_bench_{args.ckpt}", args.ckpt)
    print(f"{args.ckpt} {args.width}x{args.height}x{args.frames}, {args.steps} steps, CFG {args.guidance:g}, "
          f"{args.device}" + (f", {args.cores} cores shared out" if args.device == "cpu" else ""))
    print(f"{'processes':>9} {'mode':>9} {'s/step':>8} {'speed-up':>8}")
    baseline = None
    for procs in [int(n) for n in args.procs.split(",")]:
        for mode in (["none"] if procs == 1 else args.mode or ["auto", "sequence", "cfg"]):
            if mode == "cfg" and procs != 2:
                continue
            threads = max(1, args.cores // procs) if args.device == "cpu" else 1
            seconds = run_cli(procs, mode, args, ckpt, threads)
            baseline = baseline or seconds
            print(f"{procs:>9} {mode:>9} {seconds:>8.3f} {baseline / seconds:>7.2f}x", flush=True)
    print(f"{'processes':>9} {'tiled decode s':>15} {'speed-up':>8}")
    baseline = None
    for procs in [int(n) for n in args.procs.split(",")]:
        seconds = time_decode(procs, args, ckpt, max(1, args.cores // procs) if args.device == "cpu" else 1)
        baseline = baseline or seconds
        print(f"{procs:>9} {seconds:>15.3f} {baseline / seconds:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
