"""A test-only ComfyUI custom node for running droplet3d_orbit.json on a tiny random Flux.

Core builds CLIP-L and T5-XXL at their fixed sizes, so no tiny text encoder loads through
DualCLIPLoader. For a test run (prepare.py) the workflow's CLIPTextEncode nodes are replaced by
this node, which gives conditioning of Flux's shapes (T5 tokens [1, 256, 4096], CLIP-L pooled
[1, 768]) stored in a file beside it (written once from a fixed seed), and the DualCLIPLoader is
dropped. Everything else in the graph runs as shipped. Never installed by the pack.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STORED = Path(__file__).with_name("flux_conditioning.safetensors")
T5_TOKENS, T5_DIM, POOLED_DIM = 256, 4096, 768


def stored_conditioning() -> dict:
    if not STORED.exists():
        generator = torch.Generator().manual_seed(0)
        save_file({"context": torch.randn(1, T5_TOKENS, T5_DIM, generator=generator) * 0.1,
                   "pooled_output": torch.randn(1, POOLED_DIM, generator=generator) * 0.1}, STORED)
    return load_file(STORED)


class FluxStoredConditioning:
    CATEGORY = "testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": ""})}}

    def load(self, text):
        del text  # kept so the replaced CLIPTextEncode's widget value still fits
        tensors = stored_conditioning()
        return ([[tensors["context"], {"pooled_output": tensors["pooled_output"]}]],)


NODE_CLASS_MAPPINGS = {"FluxStoredConditioning": FluxStoredConditioning}
