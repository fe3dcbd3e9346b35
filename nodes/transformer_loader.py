"""DropletVideoTransformerLoader: the transformer alone, from ComfyUI/models/diffusion_models/."""

import logging

from .latent_scale import transformer_scale
from .loader_common import PRECISION_TOOLTIP, PRECISIONS, TRANSFORMER_OPTIONS, build_model
from .model_paths import components, resolve

logger = logging.getLogger(__name__)
FALLBACK_NOTE = (" The DropletVideo Sampler uses the factor of a DropletVideo VAE connected to the conditioning or "
                 "VAE Encode instead; core samplers and core Load VAE's latents use this one.")


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
        scale = transformer_scale(path)
        logger.info("DropletVideo Transformer Loader: the MODEL's latent scale is %s, from %s.%s", scale.factor,
                    scale.source, FALLBACK_NOTE if scale.fallback else "")
        return (build_model(path, precision, scale, weight_format, attention),)
