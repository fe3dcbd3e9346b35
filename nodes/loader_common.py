"""What the loader nodes share: precisions, building the DROPLET_* objects, a last-result cache."""

from pathlib import Path

import torch

from ..droplet_core.attention import ATTENTION_BACKENDS
from ..droplet_core.engine_options import WEIGHT_FORMATS, EngineOptions, prepare_transformer
from ..droplet_core.fp8 import quantize_t5
from ..droplet_core.loading import load_transformer, load_vae
from ..droplet_core.pipeline import DTYPES
from ..droplet_core.text import load_text_encoder
from .components import DropletModel, DropletTextEncoder, DropletVae, make_patcher
from .offload import COMFY, check_offload, resolve_node_offload, transformer_patcher

PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_TOOLTIP = ("Weight and compute dtype. bf16 is the reference's; fp16 may overflow in T5; "
                     "fp32 is exact but doubles memory.")
# Optional loader inputs (at the end, so workflows saved before them keep their widget values).
TRANSFORMER_OPTIONS = {
    "weight_format": (list(WEIGHT_FORMATS), {"default": "default", "tooltip": "default: the transformer's weights "
                      "in the precision above. fp8_e4m3fn: its blocks' Linear weights stored in fp8 with a per-layer "
                      "scale and computed in the precision above: about half the VRAM of bf16, output within 0.2% "
                      "(relative L2) of fp32. ComfyUI-style *_fp8_e4m3fn.safetensors files keep their fp8 weights "
                      "this way. LoRA patches need default."}),
    "attention": (list(ATTENTION_BACKENDS), {"default": "sdpa", "tooltip": "sdpa: PyTorch's scaled_dot_product_"
                  "attention (flash/memory-efficient kernels on CUDA). sage: SageAttention (faster on recent GPUs; "
                  "needs `pip install sageattention`)."}),
    "swap_blocks": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With offload block_swap: this many of "
                    "the transformer's blocks (the release has 42) stay in CPU memory and are streamed to the GPU "
                    "one block ahead while sampling; 0 = picked from the GPU's memory. More blocks: less VRAM, "
                    "slower. Same output either way."}),
    "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile each transformer block (inductor; on a GPU "
                "it needs Triton). The first run compiles for a minute or more, later steps are faster. Not with "
                "offload sequential."}),
}
TEXT_ENCODER_WEIGHTS_INPUT = (list(WEIGHT_FORMATS), {"default": "default", "tooltip": "default: T5 in the precision "
                               "above. fp8_e4m3fn: its Linear weights (but the feed-forward outputs) stored in fp8 "
                               "with a per-layer scale, computed in the precision above: 5.7 GiB instead of "
                               "9.1 GiB in bf16, with slightly less exact embeddings."})
TEXT_ENCODER_DEVICE_INPUT = (["default", "cpu"], {"default": "default", "tooltip": "default: T5 runs on the GPU "
                             "while encoding (ComfyUI offloads it after). cpu: it stays in CPU memory and runs there "
                             "(slower to encode, no VRAM; as Load CLIP's device cpu)."})
_LAST = {}  # kind -> (key, loaded objects)


def cached(kind: str, key: tuple, build):
    """The last result for this kind of loader if its key (path, mtime, precision) is unchanged;
    otherwise drops it first (freeing its memory) and builds anew."""
    hit = _LAST.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    _LAST.pop(kind, None)
    value = build()
    _LAST[kind] = (key, value)
    return value


def path_key(path: Path, *settings) -> tuple:
    path = Path(path).resolve()
    return str(path), path.stat().st_mtime_ns, *settings


def dtype_for(precision: str):
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    return DTYPES[precision]


def transformer_options(weight_format, attention, compile_blocks=None) -> EngineOptions:
    """The loaders' optional inputs (None from a workflow saved before they existed: defaults)."""
    return EngineOptions(weights=weight_format or "default", attention=attention or "sdpa",
                         compile=bool(compile_blocks)).check()


def build_model(transformer_path: Path, scheduler_config: dict, precision: str,
                options: EngineOptions = EngineOptions(), offload: str = COMFY, swap_blocks: int = 0) -> DropletModel:
    dtype = dtype_for(precision)
    check_offload(offload)  # before the slow part
    transformer = load_transformer(transformer_path, dtype, keep_fp8=options.keep_fp8)
    prepare_transformer(transformer, options, dtype)  # first: fp8 storage changes what the offload plan sees
    offload, swap_blocks = resolve_node_offload(offload, swap_blocks, transformer, dtype)
    if options.compile and offload == "sequential":
        raise ValueError("compile and offload sequential cannot be combined (its per-layer hooks swap weights inside "
                         "the compiled blocks): use offload block_swap with compile, or turn compile off.")
    return DropletModel(transformer_patcher(transformer, offload), scheduler_config, str(transformer_path), offload,
                        swap_blocks)


def build_vae(path: Path, precision: str) -> DropletVae:
    return DropletVae(make_patcher(load_vae(path, dtype_for(precision))), str(path))


def build_text_encoder(encoder_folder: Path, tokenizer_folder: Path, precision: str,
                       device: str = "default", weight_format: str = "default") -> DropletTextEncoder:
    if device not in ("default", "cpu"):
        raise ValueError(f"unknown text encoder device {device!r}: use default (the GPU while encoding) or cpu.")
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight_format {weight_format!r}: use one of {', '.join(WEIGHT_FORMATS)}.")
    encoder = load_text_encoder(encoder_folder, tokenizer_folder, dtype_for(precision))
    if weight_format == "fp8_e4m3fn":
        quantize_t5(encoder.model)
    cpu = torch.device("cpu") if device == "cpu" else None
    return DropletTextEncoder(make_patcher(encoder.model, load_device=cpu, offload_device=cpu), encoder.tokenizer,
                              str(encoder_folder))

