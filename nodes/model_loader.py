"""DropletVideoModelLoader: the whole release folder from ComfyUI/models/DropletVideo/."""

from ..droplet_core.configs import read_json
from ..droplet_core.loading import load_scheduler_config
from .loader_common import (PRECISION_TOOLTIP, PRECISIONS, TEXT_ENCODER_DEVICE_INPUT, TRANSFORMER_OPTIONS,
                            build_model, build_text_encoder, build_vae, cached, path_key, transformer_options)
from .model_paths import DROPLET_FOLDER, folders_with, resolve
from .offload import OFFLOAD_INPUT


class DropletVideoModelLoader:
    DESCRIPTION = ("Loads a DropletVideo release folder (DropletVideo-V1.0-weights: model_index.json, transformer/, "
                   "vae/, text_encoder/, tokenizer/, scheduler/) from ComfyUI/models/DropletVideo/.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_MODEL", "DROPLET_VAE", "DROPLET_TEXT_ENCODER")
    RETURN_NAMES = ("model", "vae", "text_encoder")
    OUTPUT_TOOLTIPS = ("The DropletVideo transformer with its scheduler config.", "The video VAE.",
                       "The T5 text encoder and tokenizer.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_folder": (folders_with(DROPLET_FOLDER, "model_index.json"), {
                "tooltip": "A folder under ComfyUI/models/DropletVideo/ that holds model_index.json "
                           "(the released DropletVideo-V1.0-weights)."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
            "offload": OFFLOAD_INPUT,
        }, "optional": {**TRANSFORMER_OPTIONS, "text_encoder_device": TEXT_ENCODER_DEVICE_INPUT}}

    def load(self, model_folder, precision, offload, weight_format=None, attention=None, swap_blocks=None,
             compile=None, text_encoder_device=None):  # noqa: A002 (the input's name)
        options = transformer_options(weight_format, attention, compile)
        root = resolve(DROPLET_FOLDER, model_folder, "DropletVideo model folder")
        read_json(root / "model_index.json")  # a clear error if this is not a release folder
        settings = (precision, options, offload, swap_blocks or 0, text_encoder_device or "default")

        def build():
            scheduler_config = load_scheduler_config(root / "scheduler")
            return (build_model(root / "transformer", scheduler_config, precision, options, offload, swap_blocks or 0),
                    build_vae(root / "vae", precision),
                    build_text_encoder(root / "text_encoder", root / "tokenizer", precision,
                                       text_encoder_device or "default"))

        return cached("release", path_key(root / "model_index.json", *settings), build)
