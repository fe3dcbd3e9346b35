"""Regenerates tests/goldens/*.safetensors by running the OFFICIAL DropletVideo pipeline.

Not run by CI. It imports the reference code (github.com/IEIT-AGI/DropletVideo: pipeline.py,
transformer.py, vae.py, utils.py) from a folder given on the command line, in an environment
with the reference's pins (diffusers 0.32.2, transformers 4.46.1; torch 2.13 CPU works):

    python -m venv ../refvenv && ../refvenv/bin/pip install torch==2.13.0 diffusers==0.32.2 \
        transformers==4.46.1 huggingface-hub==0.28.1 tokenizers==0.20.3 sentencepiece einops imageio \
        safetensors numpy pillow protobuf accelerate==0.34.2
    python -c "from droplet_core.tiny import ensure_tiny_checkpoint as e; e('../tiny')"   # our venv
    ../refvenv/bin/python tests/goldens/make_goldens.py --reference /path/to/DropletVideo --ckpt ../tiny

Every case runs fp32 on CPU with a CPU generator; per-step latents are recorded through
`callback_on_step_end`. The cases are listed in cases.json, which the tests read too; a case's "files" changes values in the
checkpoint's config files (checkpoint_variant), so the goldens cover files that differ from the tiny one.
The tiny checkpoint's weights come from droplet_core.tiny's own seeded generator, never from
diffusers' or transformers' init, so the goldens need regenerating only when tiny.VERSION changes.
"""

import argparse
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).parent
SUFFIX = (" The video is of high quality, and the view is very clear. High quality, masterpiece, best quality, "
          "highres, ultra-detailed, fantastic.")
NEGATIVE = "The video is low quality, blurry, distortion. "


def test_images():
    """Deterministic smooth start/end images (150x100, not the video's aspect ratio)."""
    ys, xs = np.mgrid[0:100, 0:150].astype(np.float32)
    start = np.stack([xs / 150, ys / 100, 0.5 + 0.5 * np.sin((xs + ys) / 9)], -1)
    end = np.stack([1 - ys / 100, 0.5 + 0.5 * np.cos(xs / 7), xs / 150], -1)
    for name, array in (("start.png", start), ("end.png", end)):
        Image.fromarray((array * 255).round().astype(np.uint8)).save(HERE / name)


def v2v_input(frames, height, width):
    """[1, 3, F, H, W] in 0..1: the start image drifting right, one pixel per frame."""
    image = np.array(Image.open(HERE / "start.png").convert("RGB").resize((width, height))) / 255.0
    video = np.stack([np.roll(image, i, axis=1) for i in range(frames)])
    return torch.from_numpy(video).float().permute(3, 0, 1, 2)[None]


def import_reference(path):
    sys.path.insert(0, str(path))
    import pipeline
    import transformer
    import vae

    for name in ("torchvision", "cv2"):  # utils.py imports them for functions we do not call
        sys.modules.setdefault(name, types.ModuleType(name))
    import utils
    return pipeline, transformer, vae, utils


def checkpoint_variant(ckpt, files, target):
    """A copy of the checkpoint at `target` whose config files get a case's `files` overrides
    ({"vae/config.json": {"scaling_factor": ...}, ...}); the checkpoint itself without any."""
    if not files:
        return Path(ckpt)
    shutil.copytree(ckpt, target)
    for relative, overrides in files.items():
        config_path = Path(target) / relative
        config = json.loads(config_path.read_text())
        config.update(overrides)
        config_path.write_text(json.dumps(config))
    return Path(target)


def run_case(case, ckpt, ref):
    from diffusers import DDIMScheduler
    from transformers import T5EncoderModel, T5Tokenizer

    pipeline_mod, transformer_mod, vae_mod, utils = ref
    transformer = transformer_mod.DropletVideoTransformer3DModel.from_pretrained_2d(ckpt, subfolder="transformer")
    vae = vae_mod.AutoencoderKLDropletVideo.from_pretrained(ckpt, subfolder="vae")
    text_encoder = T5EncoderModel.from_pretrained(ckpt, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = T5Tokenizer.from_pretrained(ckpt, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(ckpt, subfolder="scheduler")
    pipe = pipeline_mod.DropletVideo_Pipeline_Inpaint(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                                      transformer=transformer, scheduler=scheduler)

    frames = int((case["frames"] - 1) // 4 * 4) + 1
    size = [case["height"], case["width"]]
    start = str(HERE / "start.png") if case.get("start", True) else None
    end = str(HERE / "end.png") if case.get("end") else None
    if case.get("strength", 1.0) < 1.0 and not case.get("i2v_video"):
        video = v2v_input(frames, *size)
        mask = torch.ones(1, 1, frames, *size) * 255
    else:
        video, mask, _ = utils.get_image_to_video_latent(start, end, video_length=frames, sample_size=size)

    steps = []

    def record(_pipe, i, t, kwargs):
        steps.append(kwargs["latents"].detach().clone())
        return {}

    torch.manual_seed(case["seed"])  # the reference draws V2V samples and augmentation noise globally
    with torch.no_grad():
        out = pipe(case["prompt"] + (SUFFIX if case.get("suffix", True) else ""), num_frames=frames,
                   negative_prompt=NEGATIVE, height=size[0], width=size[1],
                   generator=torch.Generator("cpu").manual_seed(case["seed"]),
                   guidance_scale=case["guidance_scale"], num_inference_steps=case["steps"],
                   max_sequence_length=case["max_sequence_length"], video=video, mask_video=mask,
                   fps=[case["fps"]], strength=case.get("strength", 1.0),
                   use_dynamic_cfg=case.get("use_dynamic_cfg", False), callback_on_step_end=record).videos
    return out, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="folder with the official pipeline.py etc.")
    parser.add_argument("--ckpt", required=True, help="the tiny checkpoint folder (droplet_core.tiny)")
    args = parser.parse_args()
    test_images()
    ref = import_reference(args.reference)
    cases = json.loads((HERE / "cases.json").read_text())
    with tempfile.TemporaryDirectory() as workdir:
        for name, case in cases.items():
            ckpt = checkpoint_variant(args.ckpt, case.get("files"), Path(workdir) / name)
            video, steps = run_case(case, str(ckpt), ref)
            # Goldens stay small: all latents, and the video subsampled every 8th pixel.
            tensors = {"video_sub": video[0, :, :, ::8, ::8].contiguous(), "frames": torch.tensor(video.shape[2])}
            for i, step in enumerate(steps):
                if step[0].numel() <= 20_000:
                    tensors[f"step_{i}"] = step[0].contiguous()
                else:  # large grids: every 4th latent pixel keeps the golden in KBs
                    tensors[f"step_{i}_sub4"] = step[0, :, :, ::4, ::4].contiguous()
            save_file(tensors, str(HERE / f"{name}.safetensors"))
            print(name, tuple(video.shape), [tuple(s.shape) for s in steps[-1:]])


if __name__ == "__main__":
    main()
