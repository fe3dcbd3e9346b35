"""DropletVideoModelLoader: the whole release folder from ComfyUI/models/DropletVideo/."""

from ..droplet_core.configs import read_json
from ..droplet_core.loading import load_scheduler_config
from .loader_common import (PRECISION_TOOLTIP, PRECISIONS, TEXT_ENCODER_DEVICE_INPUT, TRANSFORMER_OPTIONS,
                            build_model, build_text_encoder, build_vae)
from .latent_scale import vae_config_scale
from .model_paths import DROPLET_FOLDER, folders_with, resolve


class DropletVideoModelLoader:
    DESCRIPTION = ("Loads a DropletVideo or Droplet3D release folder (DropletVideo-V1.0-weights, Droplet3D-V1.0-weights: "
                   "model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/) from "
                   "ComfyUI/models/DropletVideo/; which model it is comes from its files. The transformer "
                   "is a native ComfyUI MODEL: core samplers, LoRA loaders and model patches work on it, and "
                   "ComfyUI loads it partially when VRAM is short.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("MODEL", "DROPLET_VAE", "DROPLET_TEXT_ENCODER")
    RETURN_NAMES = ("model", "vae", "text_encoder")
    OUTPUT_TOOLTIPS = ("The DropletVideo transformer as a ComfyUI MODEL (v-prediction, zero-SNR schedule).",
                       "The video VAE.", "The T5 text encoder and tokenizer.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_folder": (folders_with(DROPLET_FOLDER, "model_index.json"), {
                "tooltip": "A folder under ComfyUI/models/DropletVideo/ that holds model_index.json "
                           "(the released DropletVideo-V1.0-weights or Droplet3D-V1.0-weights)."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
        }, "optional": {**TRANSFORMER_OPTIONS, "text_encoder_device": TEXT_ENCODER_DEVICE_INPUT}}

    def load(self, model_folder, precision, weight_format=None, attention=None, text_encoder_device=None):
        root = resolve(DROPLET_FOLDER, model_folder, "DropletVideo model folder")
        read_json(root / "model_index.json")  # a clear error if this is not a release folder
        model = build_model(root / "transformer", precision, vae_config_scale(root / "vae" / "config.json"),
                            weight_format, attention, load_scheduler_config(root / "scheduler"))
        return (model, build_vae(root / "vae", precision),
                build_text_encoder(root / "text_encoder", root / "tokenizer", precision,
                                   text_encoder_device or "default"))
