"""DropletVideoTransformerLoader: the transformer alone, from ComfyUI/models/diffusion_models/."""

from .loader_common import PRECISION_TOOLTIP, PRECISIONS, TRANSFORMER_OPTIONS, build_model
from .model_paths import components, resolve


class DropletVideoTransformerLoader:
    DESCRIPTION = ("Loads the DropletVideo transformer from ComfyUI/models/diffusion_models/ as a native ComfyUI "
                   "MODEL: a folder with config.json and safetensors (the release's transformer/), or one "
                   ".safetensors file (with a config.json beside it, or its config read off the weights). Samples "
                   "with the scheduler_config.json beside it or in the release layout's scheduler/ folder (else "
                   "CogVideoX's DDIM schedule, which the log says); latents are scaled by the release VAE's factor.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The DropletVideo transformer as a ComfyUI MODEL.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer_name": (components("diffusion_models"), {
                "tooltip": "A .safetensors file or a folder with config.json in ComfyUI/models/diffusion_models/."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
        }, "optional": dict(TRANSFORMER_OPTIONS)}

    def load(self, transformer_name, precision, weight_format=None, attention=None):
        path = resolve("diffusion_models", transformer_name, "transformer")
        return (build_model(path, precision, weight_format, attention),)
