"""How close ComfyUI's core samplers come to the reference on the native MODEL (benchmark).

Runs in a real ComfyUI's Python (COMFYUI_PATH set). On the tiny checkpoint, image-to-video at
128x128x9, the DropletVideo Sampler (the reference's DDIM, exact: tests/test_nodes_parity.py)
and core sampling (comfy.sample.sample, which KSampler calls, and comfy.sample.sample_custom,
which SamplerCustomAdvanced calls) start from the same noise, the reference's, and the final
latents are compared in the model's space (max |diff| and relative L2 to the reference's).

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-python bench/core_samplers.py [--steps 50]
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ["COMFYUI_PATH"]
sys.path[:0] = [COMFYUI, str(ROOT), str(ROOT / "tools")]

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import folder_paths  # noqa: E402
import numpy as np  # noqa: E402
import run_workflow  # noqa: E402
from PIL import Image  # noqa: E402

from droplet_core.sample_plan import initial_noise  # noqa: E402
from droplet_core.text import NEGATIVE_PROMPT  # noqa: E402
from droplet_core.tiny import ensure_tiny_checkpoint  # noqa: E402

SIZE = dict(width=128, height=128, frames=9, fps=8)


def run(pack, name, **inputs):
    cls = pack.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def compare(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    return {"max_abs": float((ours - reference).abs().max()),
            "rel_l2": float((ours - reference).norm() / reference.norm())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=6.0)
    args = parser.parse_args()
    pack = run_workflow.load_pack(stub=False)
    models = Path(tempfile.mkdtemp())
    ensure_tiny_checkpoint(models / "tiny")
    folder_paths.add_model_folder_path("DropletVideo", str(models))
    model, vae, text_encoder = run(pack, "DropletVideoModelLoader", model_folder="tiny", precision="fp32")
    positive, negative = run(pack, "DropletVideoTextEncode", text_encoder=text_encoder,
                             prompt="A panda plays a guitar in a bamboo forest.", negative_prompt=NEGATIVE_PROMPT,
                             append_quality_suffix=True, max_tokens=400)
    start = torch.from_numpy(np.array(Image.open(ROOT / "tests" / "goldens" / "start.png").convert("RGB")))
    positive, negative, latent = run(pack, "DropletVideoImageEncode", positive=positive, negative=negative, vae=vae,
                                     **SIZE, resize_mode="stretch", noise_augmentation=False,
                                     noise_aug_strength=0.0563, noise_aug_seed=42, vae_tiling=False,
                                     start_image=start.float()[None] / 255)
    seed, steps, cfg = 42, args.steps, args.cfg
    reference = run(pack, "DropletVideoSampler", model=model, positive=positive, negative=negative, latent=latent,
                    steps=steps, cfg=cfg, seed=seed, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)[0]
    scale = model.model.latent_format.scale_factor
    reference = reference["samples"] * scale
    samples = latent["samples"]
    noise = initial_noise((1, samples.shape[2], 16, *samples.shape[3:]), seed, "cpu", torch.float32).movedim(1, 2)
    results = {"steps": steps, "cfg": cfg}
    for sampler_name, scheduler in (("euler", "simple"), ("ddim", "simple"), ("euler", "normal")):
        out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                  seed=seed, disable_pbar=True)
        results[f"KSampler {sampler_name}/{scheduler}"] = compare(out * scale, reference)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    out = comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, positive,
                                     negative, samples, seed=seed, disable_pbar=True)
    results["SamplerCustomAdvanced euler/simple"] = compare(out * scale, reference)
    results["reference_abs_max"] = float(reference.abs().max())
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
