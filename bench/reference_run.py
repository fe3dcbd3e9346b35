"""Runs the OFFICIAL pipeline once, as inference.py does but fp32 on CPU, and prints timings.

Used by bench/engine.py and bench/native.py in the reference's own environment (see tests/goldens/make_goldens.py
for that environment); prints one JSON line: total seconds, seconds per step.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "goldens"))
from make_goldens import NEGATIVE, SUFFIX, import_reference  # noqa: E402
from run_args import add_video_args  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reference", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--ref_img", required=True)
    add_video_args(p, "--video_length")
    args = p.parse_args()

    started = time.perf_counter()
    from diffusers import DDIMScheduler
    from transformers import T5EncoderModel, T5Tokenizer

    pipeline_mod, transformer_mod, vae_mod, utils = import_reference(args.reference)
    pipe = pipeline_mod.DropletVideo_Pipeline_Inpaint(
        tokenizer=T5Tokenizer.from_pretrained(args.ckpt, subfolder="tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(args.ckpt, subfolder="text_encoder", torch_dtype=torch.float32),
        vae=vae_mod.AutoencoderKLDropletVideo.from_pretrained(args.ckpt, subfolder="vae"),
        transformer=transformer_mod.DropletVideoTransformer3DModel.from_pretrained_2d(args.ckpt, subfolder="transformer"),
        scheduler=DDIMScheduler.from_pretrained(args.ckpt, subfolder="scheduler"))
    frames = (args.video_length - 1) // 4 * 4 + 1
    video, mask, _ = utils.get_image_to_video_latent(args.ref_img, None, video_length=frames,
                                                     sample_size=[args.height, args.width])
    stamps = []

    def stamp(_pipe, i, t, kwargs):
        stamps.append(time.perf_counter())
        return {}

    with torch.no_grad():
        out = pipe(args.prompt + SUFFIX, num_frames=frames, negative_prompt=NEGATIVE, height=args.height,
                   width=args.width, generator=torch.Generator("cpu").manual_seed(42), guidance_scale=6.0,
                   num_inference_steps=args.steps, max_sequence_length=400, video=video, mask_video=mask,
                   fps=[args.fps], callback_on_step_end=stamp).videos
    # save_videos_grid needs torchvision (not installable beside this torch): write the GIF as
    # our CLI does, from the same (x * 255).astype(uint8) frames.
    images = [Image.fromarray((f * 255).numpy().astype(np.uint8)) for f in out[0].permute(1, 2, 3, 0)]
    images[0].save(Path(tempfile.gettempdir()) / "droplet_reference_bench.gif", save_all=True, append_images=images[1:],
                   duration=125, loop=0)
    total = time.perf_counter() - started
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    print(json.dumps({"total_s": total, "s_per_step": per_step}))


if __name__ == "__main__":
    main()
