"""One image-to-video run through the pack's nodes on the native MODEL, as a ComfyUI graph runs
them (loader -> Text Encode -> Image Encode -> Sampler -> VAE Decode -> GIF), for bench/native.py.

On the ComfyUI stand-in (tests/comfy_stub) by default, or a real ComfyUI with COMFYUI_PATH set
(run with that ComfyUI's Python). Prints one JSON line: total seconds, seconds per step (between
the sampler's step ends, as bench/reference_run.py and the CLI count them).

    python bench/native_run.py --models DIR --model_folder tiny --width 128 --height 128 --frames 13 --steps 10
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
sys.path[:0] = [COMFYUI or str(ROOT / "tests" / "comfy_stub"), str(ROOT), str(ROOT / "tools")]

from run_args import add_video_args  # noqa: E402 (bench/ is the script's own folder on sys.path)


def run(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="a folder holding the model folder (ComfyUI's models/DropletVideo)")
    p.add_argument("--model_folder", required=True)
    add_video_args(p)
    args = p.parse_args()

    started = time.perf_counter()
    if COMFYUI:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets
    import comfy.utils
    import folder_paths
    import numpy as np
    import run_workflow
    import torch
    from PIL import Image

    from droplet_core.text import NEGATIVE_PROMPT

    stamps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: stamps.append(
        (value, time.perf_counter())))  # real ComfyUI throttles these calls: some steps may be missing
    pack = run_workflow.load_pack(stub=False)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        folder_paths.add_model_folder_path("DropletVideo", args.models)
        model, vae, text_encoder = run(pack, "DropletVideoModelLoader", model_folder=args.model_folder,
                                       precision="fp32")
        positive, negative = run(pack, "DropletVideoTextEncode", text_encoder=text_encoder, prompt=args.prompt,
                                 negative_prompt=NEGATIVE_PROMPT, append_quality_suffix=True, max_tokens=400)
        start = torch.from_numpy(np.array(Image.open(ROOT / "tests" / "goldens" / "start.png").convert("RGB")))
        positive, negative, latent = run(pack, "DropletVideoImageEncode", positive=positive, negative=negative, vae=vae,
                                         width=args.width, height=args.height, frames=args.frames, fps=args.fps,
                                         resize_mode="stretch", noise_augmentation=False, noise_aug_strength=0.0563,
                                         noise_aug_seed=42, vae_tiling=False, start_image=start.float()[None] / 255,
                                         model=model)
        stamps.clear()  # the image encode's progress is not a step
        latent = run(pack, "DropletVideoSampler", model=model, positive=positive, negative=negative, latent=latent,
                     steps=args.steps, cfg=6.0, seed=42, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)[0]
        step_ends = list(stamps)
        frames = run(pack, "DropletVideoVAEDecode", vae=vae, latent=latent, tiling=False, trim_to_frames=False)[0]
        images = [Image.fromarray((frame * 255).numpy().astype(np.uint8)) for frame in frames]
        images[0].save(Path(tempfile.gettempdir()) / "droplet_native_bench.gif", save_all=True, append_images=images[1:],
                       duration=125, loop=0)
    total = time.perf_counter() - started
    (first_step, first_end), (last_step, last_end) = step_ends[0], step_ends[-1]
    per_step = (last_end - first_end) / (last_step - first_step) if last_step > first_step else float("nan")
    print(json.dumps({"total_s": total, "s_per_step": per_step}))


if __name__ == "__main__":
    main()
