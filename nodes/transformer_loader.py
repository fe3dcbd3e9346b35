"""DropletVideoTransformerLoader: the transformer alone, from ComfyUI/models/diffusion_models/."""

from ..droplet_core.sampling import RELEASE_SCHEDULER_CONFIG
from .loader_common import (PRECISION_TOOLTIP, PRECISIONS, TRANSFORMER_OPTIONS, build_model, cached, path_key,
                            transformer_options)
from .model_paths import components, resolve
from .offload import COMFY, OFFLOAD_INPUT


class DropletVideoTransformerLoader:
    DESCRIPTION = ("Loads the DropletVideo transformer from ComfyUI/models/diffusion_models/: a folder with "
                   "config.json and safetensors (the release's transformer/), or one .safetensors file (with a "
                   "config.json beside it, or its config read off the weights). Uses the release's DDIM scheduler.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The DropletVideo transformer with the release's scheduler config.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer_name": (components("diffusion_models"), {
                "tooltip": "A .safetensors file or a folder with config.json in ComfyUI/models/diffusion_models/."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
        }, "optional": {**TRANSFORMER_OPTIONS, "offload": OFFLOAD_INPUT}}

    def load(self, transformer_name, precision, weight_format=None, attention=None, swap_blocks=None,
             compile=None, offload=None):  # noqa: A002 (the input's name)
        options = transformer_options(weight_format, attention, compile)
        path = resolve("diffusion_models", transformer_name, "transformer")
        placement = (offload or COMFY, swap_blocks or 0)
        return cached("transformer", path_key(path, precision, options, *placement),
                      lambda: (build_model(path, dict(RELEASE_SCHEDULER_CONFIG), precision, options, *placement),))
