"""Regenerates tests/goldens/droplet3d/*.safetensors by running the OFFICIAL Droplet3D pipeline.

Not run by CI. As make_goldens.py does for DropletVideo, it imports the reference code
(github.com/IEIT-AGI/Droplet3D: pipeline.py, transformer.py, vae.py, utils.py) from a folder given
on the command line, in the reference's environment (make_goldens.py's docstring says how to make
it). inference.py itself is CUDA-only (a CUDA generator, model CPU offload): this drives its
pipeline.py as inference.py calls it, but fp32 on CPU with a CPU generator:

    python -c "from droplet_core.tiny_droplet3d import ensure_tiny_droplet3d as e; e('/tmp/tiny3d')"  # our venv
    /tmp/refvenv/bin/python tests/goldens/make_goldens_droplet3d.py --reference /path/to/Droplet3D --ckpt /tmp/tiny3d

The pipeline has no fps argument. Cases (droplet3d/cases.json, which the tests read too) give the
start image as a path, as inference.py does without view alignment, or with "pil_image" as a PIL
image, as it does after view alignment (utils.get_image_to_video_latent's Droplet3D-only branch).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).parent
OUT = HERE / "droplet3d"
sys.path.insert(0, str(HERE))
from make_goldens import NEGATIVE, SUFFIX, import_reference  # noqa: E402


def run_case(case, ckpt, ref):
    from diffusers import DDIMScheduler
    from transformers import T5EncoderModel, T5Tokenizer

    pipeline_mod, transformer_mod, vae_mod, utils = ref
    transformer = transformer_mod.Droplet3DTransformer3DModel.from_pretrained_2d(ckpt, subfolder="transformer")
    vae = vae_mod.AutoencoderKLDroplet3D.from_pretrained(ckpt, subfolder="vae")
    text_encoder = T5EncoderModel.from_pretrained(ckpt, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = T5Tokenizer.from_pretrained(ckpt, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(ckpt, subfolder="scheduler")
    pipe = pipeline_mod.Droplet3D_Pipeline_Inpaint(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                                   transformer=transformer, scheduler=scheduler)

    frames = int((case["frames"] - 1) // 4 * 4) + 1
    size = [case["height"], case["width"]]
    start = Image.open(HERE / "start.png") if case.get("pil_image") else str(HERE / "start.png")
    end = str(HERE / "end.png") if case.get("end") else None
    video, mask, _ = utils.get_image_to_video_latent(start, end, video_length=frames, sample_size=size)

    steps = []

    def record(_pipe, i, t, kwargs):
        steps.append(kwargs["latents"].detach().clone())
        return {}

    torch.manual_seed(case["seed"])
    with torch.no_grad():
        out = pipe(case["prompt"] + SUFFIX, num_frames=frames, negative_prompt=NEGATIVE, height=size[0],
                   width=size[1], generator=torch.Generator("cpu").manual_seed(case["seed"]),
                   guidance_scale=case["guidance_scale"], num_inference_steps=case["steps"],
                   max_sequence_length=case["max_sequence_length"], video=video, mask_video=mask,
                   callback_on_step_end=record).videos
    return out, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="folder with the official Droplet3D pipeline.py etc.")
    parser.add_argument("--ckpt", required=True, help="the tiny Droplet3D checkpoint (droplet_core.tiny_droplet3d)")
    args = parser.parse_args()
    ref = import_reference(args.reference)
    cases = json.loads((OUT / "cases.json").read_text())
    for name, case in cases.items():
        video, steps = run_case(case, args.ckpt, ref)
        # Small goldens, as make_goldens.py keeps them: latents (every 4th pixel on large grids), video every 8th.
        tensors = {"video_sub": video[0, :, :, ::8, ::8].contiguous(), "frames": torch.tensor(video.shape[2])}
        for i, step in enumerate(steps):
            if step[0].numel() <= 20_000:
                tensors[f"step_{i}"] = step[0].contiguous()
            else:
                tensors[f"step_{i}_sub4"] = step[0, :, :, ::4, ::4].contiguous()
        save_file(tensors, str(OUT / f"{name}.safetensors"))
        print(name, tuple(video.shape), [tuple(s.shape) for s in steps[-1:]])


if __name__ == "__main__":
    main()
