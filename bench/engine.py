"""Benchmarks (not tests): our engine against the reference-equivalent paths, same weights.

1. Transformer step: our DropletVideoTransformer3DModel vs diffusers' CogVideoXTransformer3DModel
   (what the reference's blocks equal), CFG batch of 2, at the config grid, seconds per forward
   and peak RSS, each in its own process.
2. End to end (with --reference and --reference-python): our CLI vs the official pipeline
   (bench/reference_run.py), same checkpoint and settings, wall time, s/step, peak RSS.
3. On CUDA (--device cuda): the real 5B config with random weights at 672x384x85, a few steps.
4. Engine modes (--mode, repeatable): seconds per step (one CFG-batched forward), peak VRAM and
   the ratio to the diffusers path, each in its own process. A mode is tokens joined by '+':
   none | block_swap[:N] | sequential (offload), fp8, sdpa | sage, fuse_qkv, compile.

    python bench/engine.py --preset tiny --preset medium
    python bench/engine.py --preset medium --reference ../DropletVideo --reference-python ../refvenv/bin/python
    python bench/engine.py --preset 5b --device cuda --repeats 3 --mode none --mode fp8 --mode block_swap:20 \
        --mode block_swap:20+fp8 --mode sequential --mode sage+fuse_qkv --mode compile
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OFFLOAD_TOKENS = ("none", "block_swap", "sequential")


def run_measured(cmd, env=None):
    """(stdout, wall seconds, peak RSS MiB) of a child process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # reaping it ourselves gives this child's own rusage
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{cmd[:3]} failed:\n{err.read()[-2000:]}")
        return out.read(), wall, usage.ru_maxrss / 1024


def parse_mode(spec: str):
    """'block_swap:20+fp8' -> EngineOptions (checked)."""
    from droplet_core.attention import ATTENTION_BACKENDS
    from droplet_core.engine_options import EngineOptions

    fields = {}
    for token in spec.split("+"):
        name, _, value = token.partition(":")
        if name in OFFLOAD_TOKENS:
            fields.update(offload=name, **({"blocks_on_device": int(value)} if value else {}))
        elif name == "fp8":
            fields["weights"] = "fp8_e4m3fn"
        elif name in ATTENTION_BACKENDS:
            fields["attention"] = name
        elif name in ("fuse_qkv", "compile"):
            fields[name] = True
        else:
            raise SystemExit(f"--mode {spec!r}: unknown token {token!r} (use {', '.join(OFFLOAD_TOKENS)}[:N], fp8, "
                             f"{', '.join(ATTENTION_BACKENDS)}, fuse_qkv, compile joined by '+').")
    return EngineOptions(**fields).check()


def build_model(args, device):
    import torch

    from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER
    from droplet_core.loading import load_transformer
    from droplet_core.transformer import DropletVideoTransformer3DModel

    torch.manual_seed(0)
    if args.preset != "5b":
        return load_transformer(Path(args.ckpt) / "transformer").to(device)
    with torch.device("meta"):
        model = DropletVideoTransformer3DModel(COGVIDEOX_5B_CLASS_TRANSFORMER)
    model = model.to_empty(device=device).to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.init_buffers(device=device, dtype=torch.bfloat16)
    return model


def placed_model(args):
    """(model, block runner, context) for the child's --mode (offload modes start on the CPU)."""
    import contextlib

    from droplet_core.offload.block_swap import BlockSwap
    from droplet_core.engine_options import prepare_transformer
    from droplet_core.offload.sequential import attach_sequential_offload
    from droplet_core.transformer import run_block

    options = parse_mode(args.mode or "none")
    offloaded = options.offload in ("block_swap", "sequential")
    model = build_model(args, "cpu" if offloaded else args.device)
    prepare_transformer(model, options, next(model.parameters()).dtype)
    if options.offload == "sequential":
        attach_sequential_offload(model, args.device)
    if options.offload == "block_swap":
        count = model.config.num_layers // 2 if options.blocks_on_device is None else options.blocks_on_device
        swap = BlockSwap(model, args.device, count)
        return model, swap.wrap(), swap.on_device()
    return model, run_block, contextlib.nullcontext()


def transformer_step(args):
    """Child process: time forwards of one implementation, print JSON."""
    import contextlib
    import resource

    import torch

    model, runner, placement = placed_model(args) if args.impl == "ours" else (build_model(args, args.device), None,
                                                                               contextlib.nullcontext())
    c = model.config
    dtype = model.proj_out.weight.dtype  # the compute dtype (fp8 storage keeps proj_out in it)
    shape = (2, c.latent_frames, 16, c.sample_height, c.sample_width)
    x = torch.randn(shape, device=args.device, dtype=dtype)
    inpaint = torch.randn(2, c.latent_frames, 17, c.sample_height, c.sample_width, device=args.device, dtype=dtype)
    text = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, device=args.device, dtype=dtype)
    t, fps = torch.tensor([500, 500], device=args.device), torch.tensor([8], device=args.device)
    if args.impl == "diffusers":
        from diffusers import CogVideoXTransformer3DModel

        twin = CogVideoXTransformer3DModel(
            num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
            in_channels=c.in_channels, out_channels=c.out_channels, time_embed_dim=c.time_embed_dim,
            text_embed_dim=c.text_embed_dim, num_layers=c.num_layers, sample_width=c.sample_width,
            sample_height=c.sample_height, sample_frames=c.sample_frames, use_learned_positional_embeddings=False)
        twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fps_")}, strict=False)
        del model
        twin = twin.to(args.device, dtype).eval()
        forward = lambda: twin(torch.cat([x, inpaint], 2), text, t, return_dict=False)  # noqa: E731
    else:
        forward = lambda: model(x, text, t, fps, inpaint, block_runner=runner)  # noqa: E731
    times = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()  # count the step, not the set-up (e.g. bf16 before fp8)
    with placement, torch.no_grad():
        for _ in range(args.repeats + 1):
            started = time.perf_counter()
            forward()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    result = {"s_per_forward": sorted(times[1:])[len(times[1:]) // 2],
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.device.startswith("cuda"):
        result["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result))


def compare_transformers(preset, ckpt, device, repeats):
    rows = {}
    for impl in ("ours", "diffusers"):
        out, _, _ = run_measured([sys.executable, __file__, "--child", impl, "--preset", preset, "--ckpt", str(ckpt),
                                  "--device", device, "--repeats", str(repeats)])
        rows[impl] = json.loads(out.strip().splitlines()[-1])
    ours, theirs = rows["ours"], rows["diffusers"]
    print(f"transformer step [{preset}, {device}, CFG batch 2]: ours {ours['s_per_forward']:.4f} s, "
          f"diffusers {theirs['s_per_forward']:.4f} s (ratio {ours['s_per_forward'] / theirs['s_per_forward']:.2f}); "
          f"peak RSS ours {ours['peak_rss_mib']:.0f} MiB, diffusers {theirs['peak_rss_mib']:.0f} MiB")


def compare_modes(preset, ckpt, args):
    """Each --mode against the diffusers path, same config, inputs and device."""
    rows = {}
    for name in ["diffusers", *args.mode]:
        child = ["--child", "diffusers"] if name == "diffusers" else ["--child", "ours", "--mode", name]
        out, _, _ = run_measured([sys.executable, __file__, *child, "--preset", preset, "--ckpt", str(ckpt),
                                  "--device", args.device, "--repeats", str(args.repeats)])
        rows[name] = json.loads(out.strip().splitlines()[-1])
    reference = rows["diffusers"]["s_per_forward"]
    for name, row in rows.items():
        vram = f"{row['peak_vram_gib']:.2f} GiB" if "peak_vram_gib" in row else "n/a (CPU)"
        print(f"mode [{preset}, {args.device}] {name:24s} {row['s_per_forward']:.4f} s/step, peak VRAM {vram}, "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB, ratio to diffusers {row['s_per_forward'] / reference:.2f}")


def compare_end_to_end(preset, ckpt, args):
    size = {"tiny": ("128", "128", "13"), "medium": ("320", "192", "13")}[preset]
    image = str(ROOT / "tests" / "goldens" / "start.png")
    ours_cmd = [sys.executable, "-m", "droplet_core", "--ckpt", str(ckpt), "--ref_img", image, "--fps", "8",
                "--prompt", "A panda plays a guitar in a bamboo forest.", "--width", size[0], "--height", size[1],
                "--video_length", size[2], "--num_inference_steps", str(args.steps),
                "--out", str(Path(tempfile.gettempdir()) / "droplet_bench.gif"),
                "--device", "cpu", "--dtype", "fp32"]
    ref_cmd = [args.reference_python, str(ROOT / "bench" / "reference_run.py"), "--reference", args.reference,
               "--ckpt", str(ckpt), "--ref_img", image, "--width", size[0], "--height", size[1],
               "--video_length", size[2], "--steps", str(args.steps)]
    out, ours_wall, ours_rss = run_measured(ours_cmd)
    ours_step = float(out.split(" s/step")[0].rsplit(", ", 1)[-1])
    out, ref_wall, ref_rss = run_measured(ref_cmd)
    ref_step = json.loads(out.strip().splitlines()[-1])["s_per_step"]
    print(f"end to end [{preset}, {size[0]}x{size[1]}x{size[2]}, {args.steps} steps, CPU fp32]: "
          f"ours {ours_wall:.2f} s, reference {ref_wall:.2f} s (ratio {ours_wall / ref_wall:.2f}); "
          f"per step ours {ours_step:.4f} s, reference {ref_step:.4f} s (ratio {ours_step / ref_step:.2f}); "
          f"peak RSS ours {ours_rss:.0f} MiB, reference {ref_rss:.0f} MiB (ratio {ours_rss / ref_rss:.2f})")


def compare_step_cache(preset, ckpt, steps, thresholds=(0.0, 0.1, 0.2)):
    """Speed and output difference of TeaCache-style caching against the uncached run."""
    from PIL import Image

    from droplet_core.pipeline import Request, load_pipeline

    pipe = load_pipeline(ckpt)
    size = {"tiny": (128, 128), "medium": (320, 192)}[preset]
    image = Image.open(ROOT / "tests" / "goldens" / "start.png")
    baseline = None
    for threshold in thresholds:
        request = Request(prompt="A panda plays a guitar in a bamboo forest.", image=image, width=size[0],
                          height=size[1], frames=13, steps=steps, fps=8, cache_threshold=threshold)
        started = time.perf_counter()
        frames = pipe.generate(request).frames
        seconds = time.perf_counter() - started
        baseline = frames if baseline is None else baseline
        diff = (frames - baseline).abs()
        print(f"step cache [{preset}, {steps} steps] threshold {threshold:g}: {seconds:.2f} s end to end, "
              f"mean |diff| {diff.mean():.4f}, max {diff.max():.4f} (0..1 pixels)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=["tiny", "medium", "5b"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reference", help="folder of the official DropletVideo code (enables end-to-end runs)")
    p.add_argument("--reference-python", default=sys.executable, help="python of the reference's environment")
    p.add_argument("--cache", action="store_true", help="also measure step caching thresholds")
    p.add_argument("--mode", action="append", default=[], help="engine mode to time against diffusers, e.g. "
                   "none, fp8, block_swap:20+fp8, sequential, sage+fuse_qkv, compile (repeatable)")
    p.add_argument("--child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.impl = args.child
        args.preset = args.preset[0]
        args.mode = args.mode[0] if args.mode else None
        return transformer_step(args)
    for spec in args.mode:
        parse_mode(spec)  # fail before any child starts

    from droplet_core.tiny import ensure_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset or ["tiny", "medium"]:
            ckpt = None if preset == "5b" else ensure_tiny_checkpoint(Path(tmp) / preset, preset)
            if args.mode:
                compare_modes(preset, ckpt, args)
            else:
                compare_transformers(preset, ckpt, args.device, args.repeats)
            if args.reference and preset != "5b":
                compare_end_to_end(preset, ckpt, args)
            if args.cache and preset != "5b":
                compare_step_cache(preset, ckpt, args.steps)


if __name__ == "__main__":
    main()
