"""DropletVideoFPSSweep: one video per FPS condition, same seed, for comparing motion speeds."""

from typing import List

import torch

from .fps_condition import model_reads_fps
from .image_encode import FPS_INPUT
from .sampler import DropletVideoSampler, sample_latent, sampler_plan
from .vae_decode import DropletVideoVAEDecode

LAYOUTS = ("side_by_side", "batch")


def refuse_without_fps(model) -> None:
    config = model.model.droplet_config
    if not model_reads_fps(config):
        raise ValueError(f"DropletVideo FPS Sweep: this MODEL is {config.kind.label}, which has no FPS condition, so "
                         f"every panel would be the same video. Use the DropletVideo Sampler (one video).")


def parse_fps_values(text: str) -> List[int]:
    """"4, 8,16" -> [4, 8, 16]; each a whole number within the sampler's fps range."""
    low, high = (FPS_INPUT[1][k] for k in ("min", "max"))
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"fps_values {text!r}: {part!r} is not a whole number: write FPS values separated by "
                             f"commas, e.g. 4,8,16,32.")
        if not low <= int(part) <= high:
            raise ValueError(f"fps_values {text!r}: {part} is outside {low}..{high}, the sampler's fps range.")
        values.append(int(part))
    if not values:
        raise ValueError("fps_values is empty: write FPS values separated by commas, e.g. 4,8,16,32.")
    return values


def arrange(videos: List[torch.Tensor], layout: str) -> torch.Tensor:
    """[F, H, W, 3] videos -> side_by_side [F, H, W * n, 3] or batch [n * F, H, W, 3]."""
    return torch.cat(videos, dim=2 if layout == "side_by_side" else 0)


class DropletVideoFPSSweep:
    DESCRIPTION = ("Renders the same prompt, image and seed at several FPS conditions (the motion-speed control) "
                   "and returns the frames side by side, left to right in the order given, or one video after "
                   "another. Each panel equals DropletVideoSampler + DropletVideoVAEDecode at that fps (the conditioning's own FPS is replaced). "
                   "DropletVideo only: a Droplet3D MODEL has no FPS condition and is refused.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("side_by_side: [frames, height, width x n, 3]; batch: [n x frames, height, width, 3].",)
    FUNCTION = "sweep"

    @classmethod
    def INPUT_TYPES(cls):
        sampler = DropletVideoSampler.INPUT_TYPES()["required"]
        decode = DropletVideoVAEDecode.INPUT_TYPES()["required"]
        return {"required": {
            "model": sampler["model"], "vae": decode["vae"], "positive": sampler["positive"],
            "negative": sampler["negative"], "latent": sampler["latent"],
            "fps_values": ("STRING", {"default": "4,8,16,32", "tooltip": "FPS conditions to render, separated by "
                                      "commas (each 1..60); the video is rendered once per value."}),
            "steps": sampler["steps"], "cfg": sampler["cfg"], "seed": sampler["seed"],
            "scheduler": sampler["scheduler"],
            "layout": (list(LAYOUTS), {"default": "side_by_side", "tooltip": "side_by_side: one video, the FPS "
                                       "values as panels left to right; batch: the videos one after another."}),
            "vae_tiling": ("BOOLEAN", {"default": False, "tooltip": decode["tiling"][1]["tooltip"]}),
        }}

    def sweep(self, model, vae, positive, negative, latent, fps_values, steps, cfg, seed, scheduler, layout,
              vae_tiling):
        refuse_without_fps(model)
        fps_list = parse_fps_values(fps_values)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}.")
        # All sampling first, then all decoding: each model is loaded once, not once per value.
        plan = sampler_plan(model, steps, cfg, seed, scheduler)
        latents = [sample_latent(model, positive, negative, latent, plan, fps=fps, node="DropletVideo FPS Sweep")
                   for fps in fps_list]
        decoder = DropletVideoVAEDecode()
        return (arrange([decoder.decode(vae, video, vae_tiling, False)[0] for video in latents], layout),)
