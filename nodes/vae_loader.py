"""DropletVideoVAELoader: the VAE alone, from ComfyUI/models/vae/."""

from .loader_common import PRECISION_TOOLTIP, PRECISIONS, build_vae
from .model_paths import components, resolve


class DropletVideoVAELoader:
    DESCRIPTION = ("Loads the DropletVideo (CogVideoX-family) VAE from ComfyUI/models/vae/: a folder with "
                   "config.json and safetensors (the release's vae/), or a single .safetensors file (its config.json "
                   "beside it; without one, CogVideoX-2B's VAE config, scaling_factor 1.15258426, which the log "
                   "says).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The video VAE.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (components("vae"), {
                "tooltip": "A folder with config.json, or a .safetensors file, in ComfyUI/models/vae/."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
        }}

    def load(self, vae_name, precision):
        return (build_vae(resolve("vae", vae_name, "VAE"), precision),)
