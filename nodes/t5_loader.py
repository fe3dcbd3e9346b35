"""DropletVideoT5Loader: the T5 text encoder and tokenizer, from ComfyUI/models/text_encoders/."""

from pathlib import Path

from .loader_common import (PRECISION_TOOLTIP, PRECISIONS, TEXT_ENCODER_DEVICE_INPUT, TEXT_ENCODER_WEIGHTS_INPUT,
                            build_text_encoder)
from .model_paths import folders_with, resolve

TOKENIZER_FILE = "spiece.model"


def tokenizer_folder(encoder_folder: Path) -> Path:
    """The tokenizer beside the encoder: same folder, a tokenizer/ subfolder, or a tokenizer/
    sibling (the release's layout)."""
    for candidate in (encoder_folder, encoder_folder / "tokenizer", encoder_folder.parent / "tokenizer"):
        if (candidate / TOKENIZER_FILE).is_file():
            return candidate
    raise ValueError(f"no T5 tokenizer ({TOKENIZER_FILE}) in {encoder_folder}, {encoder_folder / 'tokenizer'} or "
                     f"{encoder_folder.parent / 'tokenizer'}: copy the release's tokenizer/ folder into "
                     f"{encoder_folder}.")


class DropletVideoT5Loader:
    DESCRIPTION = ("Loads the T5 text encoder (transformers format: config.json + safetensors shards) and its "
                   "tokenizer from a folder in ComfyUI/models/text_encoders/. The tokenizer files may sit in the "
                   "same folder or in a tokenizer/ subfolder.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The T5 text encoder and tokenizer.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (folders_with("text_encoders", "config.json"), {
                "tooltip": "A folder in ComfyUI/models/text_encoders/ with the release's text_encoder/ files "
                           "and tokenizer files (beside them or in tokenizer/)."}),
            "precision": (PRECISIONS, {"default": "bf16", "tooltip": PRECISION_TOOLTIP}),
        }, "optional": {"device": TEXT_ENCODER_DEVICE_INPUT, "weight_format": TEXT_ENCODER_WEIGHTS_INPUT}}

    def load(self, text_encoder_name, precision, device=None, weight_format=None):
        folder = resolve("text_encoders", text_encoder_name, "text encoder folder")
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file; the T5 loader takes a transformers folder (config.json + "
                             f"safetensors). For a single-file T5 use ComfyUI's Load CLIP (type cogvideox) and "
                             f"connect it to DropletVideoTextEncode's clip input.")
        tokenizer = tokenizer_folder(folder)
        return (build_text_encoder(folder, tokenizer, precision, device or "default", weight_format or "default"),)
