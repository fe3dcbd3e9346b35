"""`python -m droplet_core`: the reference inference.py's options, plus output and device control.

The model (DropletVideo or Droplet3D) is detected from the checkpoint's files (model_kind.py);
options left out take that model's reference defaults (size, frames, text length, file frame rate).
Droplet3D has no FPS condition: --fps and --fps_sweep are refused for it."""

import argparse
import contextlib
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from .attention import ATTENTION_BACKENDS
from .engine_options import WEIGHT_FORMATS, EngineOptions
from .offload.plan import Workload
from .parallel import DEFAULT_TIMEOUT_S, PARALLEL_MODES, ParallelRunError, checkpoint_heads, launched, start_parallel
from .continuation import DEFAULT_OVERLAP
from .loading import checkpoint_kind
from .model_kind import ModelKind
from .pipeline import DTYPES, Request, load_pipeline
from .offload.placement import OFFLOAD_MODES
from .sampling import SCHEDULERS
from .segments import Extension, Segment, extend, read_plan
from .shapes import RESIZE_MODES, size_for_budget
from .text import NEGATIVE_PROMPT
from .tiny import ensure_tiny_checkpoint
from .tiny_droplet3d import ensure_tiny_droplet3d
from .video_io import load_image, read_video, write_video

DEFAULT_PROMPT = "A panda plays a guitar in a bamboo forest, the camera slowly moving to the left."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m droplet_core", description="DropletVideo and Droplet3D "
                                "image-to-video (the model is detected from --ckpt's files).")
    p.add_argument("--ckpt", required=True, help="released DropletVideo-V1.0-weights or Droplet3D-5B folder, or "
                   "'tiny' / 'tiny-droplet3d' for the built-in random-weight test models")
    p.add_argument("--ref_img", "--ref_img_dir", dest="ref_img", help="start image (omit for text-to-video)")
    p.add_argument("--end_img", help="optional end image (start + end frame)")
    p.add_argument("--fps", "--FPS", dest="fps", type=float, default=None, help="DropletVideo's FPS condition: "
                   "motion strength (default 16). Droplet3D has none: refused there")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--negative_prompt", default=NEGATIVE_PROMPT)
    p.add_argument("--no_prompt_suffix", action="store_true", help="do not append the reference's quality suffix")
    p.add_argument("--width", type=int, default=None, help="multiple of 16 (default DropletVideo 672, Droplet3D "
                   "512; tiny: 128)")
    p.add_argument("--height", type=int, default=None, help="multiple of 16 (default DropletVideo 384, Droplet3D "
                   "512; tiny: 128)")
    p.add_argument("--base_resolution", type=int, help="pick width/height from the image's aspect ratio and "
                   "this pixel budget (e.g. 512 .. 896)")
    p.add_argument("--video_length", type=int, default=None, help="frames, rounded to 4k+1 (default 85; tiny: 13)")
    p.add_argument("--num_inference_steps", type=int, default=None, help="default 50 (tiny: 10)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--guidance_scale", type=float, default=6.0)
    p.add_argument("--use_dynamic_cfg", action="store_true")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    p.add_argument("--max_sequence_length", type=int, default=None, help="T5 tokens (default DropletVideo 400, "
                   "Droplet3D 450, as their inference.py)")
    p.add_argument("--input_video", help="video-to-video input (use with --strength < 1)")
    p.add_argument("--strength", type=float, default=1.0, help="V2V denoise strength (1 = from noise)")
    p.add_argument("--trim_frames", action="store_true", help="return exactly the rounded frame count "
                   "(the reference returns 4 frames per latent for an even latent count: 85 -> 88)")
    p.add_argument("--long_video", action="store_true", help="sliding temporal windows for more frames than the "
                   "model was trained on (ExVideo/EasyAnimate-style long video)")
    p.add_argument("--window_overlap", type=int, default=0, help="latent frames shared by windows (0: half)")
    p.add_argument("--window_prompt", action="append", default=[], help="with --long_video: a prompt schedule, one "
                   "--window_prompt per window in order (fewer prompts share the windows evenly; "
                   "docs/long_video.md)")
    add_segment_options(p)
    p.add_argument("--cache_threshold", type=float, default=0.0, help="TeaCache-style step skipping: 0 = off, "
                   "0.05 .. 0.2 trade quality for speed")
    p.add_argument("--tiled_vae", action="store_true", help="tiled VAE encode/decode (less memory)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="merge a LoRA (.safetensors) into the transformer; repeat to stack (strength default 1)")
    p.add_argument("--fps_sweep", help="comma-separated FPS values (e.g. 4,8,16,32): one video each from the same "
                   "seed, written as OUT_FPS<n> plus a side-by-side OUT_sweep")
    p.add_argument("--out", default="samples/droplet.mp4", help=".mp4, .gif, .npz (key 'frames') or a folder")
    p.add_argument("--playback_fps", type=float, default=None, help="file frame rate (both references: 8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    add_engine_options(p)
    p.add_argument("--parallel", choices=PARALLEL_MODES, default="auto", help="under torchrun: how the processes "
                   "share one video. auto: CFG halves on 2 ranks when guidance > 1, video tokens split over the rest; "
                   "sequence; cfg (2 processes); none (rank 0 alone)")
    p.add_argument("--dist_timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds a rank waits in a "
                   "collective before it ends with an error (torchrun runs)")
    return p


def add_segment_options(p: argparse.ArgumentParser) -> None:
    """Continuing a video and segments plans (segments.py, docs/long_video.md)."""
    p.add_argument("--extend_from", help="a video file to continue: the output is this video followed by the new "
                   "segment(s), conditioned on its last --overlap frames")
    p.add_argument("--segments", help="a JSON segments plan: [{\"prompt\": ..., \"fps\": ..., \"frames\"?: ..., "
                   "\"seed\"?: ...}, ...]; each segment continues the one before; one joined video is written")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="frames (4k+1) a segment is conditioned on "
                   f"and shares with the one before (default {DEFAULT_OVERLAP})")
    p.add_argument("--drift_control", choices=["on", "off"], default="on", help="anchor each segment's colour and "
                   "contrast to the first one (or to --extend_from's video)")
    p.add_argument("--resize_mode", choices=RESIZE_MODES, default="stretch", help="--extend_from: how a video of "
                   "another size meets --width x --height")


def run_segments(args, pipe, request: Request) -> torch.Tensor:
    """The joined uint8 video of --segments / --extend_from, with progress per segment and step."""
    segments = read_plan(args.segments) if args.segments else [Segment(request.prompt, request.fps)]
    previous = read_video(args.extend_from) if args.extend_from else None
    extension = Extension(args.overlap, args.drift_control == "on", args.resize_mode)
    has_fps = pipe.kind.has_fps
    if args.segments and not has_fps:
        print(f"warning: {pipe.kind.label} has no FPS condition: the plan's fps values change nothing.",
              file=sys.stderr)

    def on_segment(index: int, count: int) -> None:
        segment = segments[index]
        fps = f" (fps {segment.fps:g})" if has_fps else ""
        sys.stderr.write(f"segment {index + 1}/{count}{fps}: {segment.prompt[:60]}\n")

    return extend(pipe, request, segments, extension, previous, on_step=Progress(), on_segment=on_segment)


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Memory and speed flags (engine_options.py); bench/engine.py takes the same."""
    p.add_argument("--offload", nargs="?", const="model", default="none", choices=OFFLOAD_MODES,
                   help="none; model (the bare flag: components visit the GPU only while used); block_swap (first "
                   "--blocks_on_device blocks resident, the rest streamed); sequential (layer by layer, least VRAM); "
                   "auto (picked from free VRAM for this size)")
    p.add_argument("--blocks_on_device", type=int, help="block_swap: transformer blocks kept on the GPU "
                   "(default: from free VRAM)")
    p.add_argument("--weights", choices=WEIGHT_FORMATS, default="default", help="fp8_e4m3fn: transformer block "
                   "weights stored in fp8, computed in --dtype (half the VRAM of bf16 weights)")
    p.add_argument("--fp8", dest="weights", action="store_const", const="fp8_e4m3fn", help="= --weights fp8_e4m3fn")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa",
                   help="sage needs `pip install sageattention` (CUDA)")
    p.add_argument("--fuse_qkv", action="store_true", help="one QKV projection per block instead of three")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block (slow first step)")
    p.add_argument("--t5_on_cpu", action="store_true", help="T5 stays in CPU memory and encodes there (saves its "
                   "~9.5 GB of VRAM in bf16; encoding takes longer)")
    p.add_argument("--t5_fp8", action="store_true", help="store T5's Linear weights (but wo) in fp8: 5.7 GiB instead "
                   "of 9.1 GiB in bf16")
    p.add_argument("--compile_backend", default="inductor", help=argparse.SUPPRESS)


def engine_options_from_args(args) -> EngineOptions:
    return EngineOptions(offload=args.offload, blocks_on_device=args.blocks_on_device, weights=args.weights,
                         attention=args.attention, fuse_qkv=args.fuse_qkv, compile=args.compile,
                         compile_backend=args.compile_backend, text_encoder_on_cpu=args.t5_on_cpu,
                         text_encoder_fp8=args.t5_fp8)


DROPLETVIDEO_FPS = 16  # inference.py's --FPS default
TINY_CHECKPOINTS = {"tiny": ensure_tiny_checkpoint, "tiny-droplet3d": ensure_tiny_droplet3d}


def apply_model_defaults(args, kind: ModelKind) -> None:
    """Options left out take the detected model's reference values; --fps is refused for a model
    without the FPS condition (it would change nothing, silently)."""
    if not kind.has_fps:
        given = "--fps_sweep" if args.fps_sweep else "--fps" if args.fps is not None else None
        if given:
            raise ValueError(f"{given}: {kind.label} has no FPS condition (its reference pipeline takes no fps), "
                             f"so the value would change nothing. Leave {given} out; the file's frame rate is "
                             f"--playback_fps (default {kind.playback_fps:g}).")
    if args.fps is None:
        args.fps = DROPLETVIDEO_FPS
    if args.max_sequence_length is None:
        args.max_sequence_length = kind.max_sequence_length
    if args.playback_fps is None:
        args.playback_fps = kind.playback_fps
    args.width = args.width or kind.width
    args.height = args.height or kind.height
    args.video_length = args.video_length or kind.frames


def _tiny_defaults(args) -> None:
    """The tiny model's positional table covers 128x128 and 13 frames; keep its demo quick."""
    args.width = args.width or 128
    args.height = args.height or 128
    args.video_length = args.video_length or 13
    args.num_inference_steps = args.num_inference_steps or 10


def request_from_args(args) -> Request:
    image = load_image(args.ref_img) if args.ref_img else None
    if args.base_resolution:
        if image is None:
            raise ValueError("--base_resolution needs --ref_img (it follows the image's aspect ratio).")
        args.width, args.height = size_for_budget(*image.size, args.base_resolution)
    video = read_video(args.input_video) if args.input_video else None
    return Request(
        prompt=args.prompt, image=image, end_image=load_image(args.end_img) if args.end_img else None,
        negative_prompt=args.negative_prompt, width=args.width, height=args.height,
        frames=args.video_length, fps=args.fps, steps=args.num_inference_steps or 50, seed=args.seed,
        guidance_scale=args.guidance_scale, use_dynamic_cfg=args.use_dynamic_cfg, scheduler=args.scheduler,
        max_sequence_length=args.max_sequence_length, append_prompt_suffix=not args.no_prompt_suffix,
        video=video, strength=args.strength, tiled_vae=args.tiled_vae, long_video=args.long_video,
        window_overlap=args.window_overlap, cache_threshold=args.cache_threshold, trim_to_requested_frames=args.trim_frames,
        prompt_schedule=args.window_prompt)


def parse_lora(spec: str):
    path, _, strength = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    try:
        return path, float(strength) if strength else 1.0
    except ValueError:
        raise ValueError(f"--lora {spec!r}: the strength after ':' must be a number, e.g. my_lora.safetensors:0.8")


def write_outputs(results, fps_values, out: Path, playback_fps: float) -> Path:
    if len(results) == 1:
        return write_video(results[0].frames, out, playback_fps)
    for fps, result in zip(fps_values, results):
        write_video(result.frames, out.with_name(f"{out.stem}_FPS{fps:g}{out.suffix}"), playback_fps)
    side_by_side = torch.cat([r.frames for r in results], dim=2)
    return write_video(side_by_side, out.with_name(f"{out.stem}_sweep{out.suffix}"), playback_fps)


class Progress:
    """A text progress bar that also times the denoising steps (between step ends, so the
    conditioning work before the first step is not counted)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, i: int, total: int, _latents) -> None:
        self.stamps.append(time.perf_counter())
        draw_bar(i, total)

    @property
    def seconds_per_step(self) -> float:
        if len(self.stamps) < 2:
            return float("nan")
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)


def draw_bar(i: int, total: int) -> None:
    width = 30
    done = (i + 1) * width // total
    sys.stderr.write(f"\rdenoising [{'#' * done}{'.' * (width - done)}] {i + 1}/{total}")
    if i + 1 == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()  # our own bar is the one that matters
    if args.ckpt in TINY_CHECKPOINTS:
        args.ckpt = TINY_CHECKPOINTS[args.ckpt]()
        _tiny_defaults(args)
    dtype = DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    run = None
    try:
        started = time.perf_counter()
        kind = checkpoint_kind(args.ckpt)
        apply_model_defaults(args, kind)
        request = request_from_args(args)
        if launched().world_size > 1:  # torchrun: several processes on this one video (parallel/)
            run = start_parallel(args.parallel, args.device, checkpoint_heads(args.ckpt), request.guidance_scale,
                                 args.dist_timeout)
            if run is None and launched().rank != 0:
                print(f"rank {launched().rank}: --parallel none, rank 0 generates alone", file=sys.stderr)
                return 0
        fps_values = [float(v) for v in args.fps_sweep.split(",")] if args.fps_sweep else [args.fps]
        workload = Workload(request.width, request.height, request.frames, request.max_sequence_length,
                            2 if request.guidance_scale > 1 else 1, dtype.itemsize, request.tiled_vae)
        pipe = load_pipeline(args.ckpt, run.device if run else args.device, dtype, options=engine_options_from_args(args),
                             loras=[parse_lora(spec) for spec in args.lora], workload=workload)
        unknown = pipe.lora_unknown_keys
        if unknown:
            print(f"warning: {len(unknown)} LoRA keys matched no layer (first: {unknown[0]})", file=sys.stderr)
        loaded = time.perf_counter()
        if run is not None:
            run.attach(pipe)
            run.check(request)
        progress = Progress()
        if args.segments or args.extend_from:
            if run is not None:
                raise ValueError("--segments / --extend_from run in one process: start them without torchrun.")
            return write_joined(args, pipe, request, started, loaded)
        with run.guard() if run else contextlib.nullcontext():
            results = pipe.generate_fps_sweep(request, fps_values,
                                              on_step=progress if not run or run.keeps_video else None)
        if run is not None and not run.keeps_video:
            return 0  # rank 0 writes the video
        result = results[0]
        out = write_outputs(results, fps_values, Path(args.out), args.playback_fps)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ParallelRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    finally:
        if run is not None:
            run.close()
    total = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    condition = f"FPS condition {','.join(f'{v:g}' for v in fps_values)}" if kind.has_fps else "no FPS condition"
    summary = (f"wrote {out} ({result.frames.shape[0]} frames {request.width}x{request.height}, {kind.label}, "
               f"{condition}, playback {args.playback_fps:g} fps) in {total:.1f} s "
               f"(load {loaded - started:.1f} s, generate {total - (loaded - started):.1f} s, "
               f"{progress.seconds_per_step:.3f} s/step, offload {pipe.offload}); peak RSS {peak_rss:.0f} MiB")
    if args.device.startswith("cuda"):
        summary += f", peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    print(summary)
    return 0


def write_joined(args, pipe, request: Request, started: float, loaded: float) -> int:
    frames = run_segments(args, pipe, request)
    out = write_video(frames, Path(args.out), args.playback_fps)
    total = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {out} ({frames.shape[0]} frames {request.width}x{request.height}, joined) in {total:.1f} s "
          f"(load {loaded - started:.1f} s, generate {total - (loaded - started):.1f} s); peak RSS {peak_rss:.0f} MiB")
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
