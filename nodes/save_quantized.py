"""DropletVideoSaveQuantized: the transformer written in one of ComfyUI's quantized formats into
ComfyUI/models/diffusion_models/, where the Transformer Loader lists it."""

import os
from pathlib import Path

import comfy.model_management
import folder_paths

from .model_paths import components, resolve
from .quantized_writer import host_formats, write_quantized


class DropletVideoSaveQuantized:
    DESCRIPTION = ("Writes a bf16 DropletVideo (or Droplet3D) transformer as one .safetensors in ComfyUI's "
                   "mixed-precision format, quantized with this ComfyUI's own functions (comfy-kitchen). The block "
                   "Linears take the format; embeddings, norms, adaLN and proj_out stay bf16 (docs/quantization.md). "
                   "The file lands in models/diffusion_models/ and holds its config, so the Transformer Loader "
                   "reads it with no other setting. Needs about one bf16 copy of RAM (11 GB at release size).")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("transformer_name",)
    OUTPUT_TOOLTIPS = ("The written file's name, as the Transformer Loader lists it.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        formats = host_formats() or ["(install comfy-kitchen)"]
        return {"required": {
            "transformer_name": (components("diffusion_models"), {
                "tooltip": "The bf16 transformer: a .safetensors file or a folder with config.json in "
                           "ComfyUI/models/diffusion_models/."}),
            "quant_format": (formats, {"default": formats[0], "tooltip": "ComfyUI's formats on this install "
                       "(comfy.quant_ops.QUANT_ALGOS). float8_e4m3fn: half of bf16, nearly lossless. nvfp4 / "
                       "convrot_w4a4 / asym_w4a8_int8: about a quarter, 4-bit. See docs/quantization.md."}),
            "file_name": ("STRING", {"default": "DropletVideo-5B", "tooltip": "Written as <file_name>_<format>"
                          ".safetensors; an existing file is never overwritten."}),
        }, "optional": {
            "quantize_modulation": ("BOOLEAN", {"default": False, "tooltip": "Also quantize the adaLN modulation "
                                    "Linears (norm1/norm2.linear, 14% of the 5B's weights): 12% smaller fp8, 26% smaller "
                                    "4-bit files; +6-7% forward error on random weights (docs/quantization.md)."}),
        }}

    def save(self, transformer_name, quant_format, file_name, quantize_modulation=None):
        source = resolve("diffusion_models", transformer_name, "transformer")
        name = f"{Path(file_name).name}_{quant_format}.safetensors"
        out = Path(folder_paths.get_folder_paths("diffusion_models")[0]) / name
        os.makedirs(out.parent, exist_ok=True)
        write_quantized(source, out, quant_format, bool(quantize_modulation), comfy.model_management.get_torch_device())
        return {"ui": {"text": [name]}, "result": (name,)}
