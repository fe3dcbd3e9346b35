"""What the loader nodes share: precisions, the optional inputs, building MODEL / DROPLET_VAE /
DROPLET_TEXT_ENCODER. Nothing is cached here: ComfyUI's node cache keeps a loader's outputs
while its inputs are unchanged, and "Free model and node cache" drops them."""

from pathlib import Path
from typing import NamedTuple, Optional

from ..droplet_core.engine_options import WEIGHT_FORMATS
from ..droplet_core.fp8 import quantize_t5
from ..droplet_core.loading import load_vae, scheduler_config_for_transformer
from ..droplet_core.pipeline import DTYPES
from ..droplet_core.text import load_text_encoder
from .components import DropletTextEncoder, DropletVae, text_encoder_patcher, vae_patcher
from .heap_release import release_heap_when_freed
from .latent_scale import ModelScale
from .native.attention import COMFY_ATTENTION, check_attention
from .native.loading import load_native_model

PRECISIONS = ("bf16", "fp16", "fp32")
PRECISION_TOOLTIP = ("Weight and compute dtype. bf16 is the reference's; fp16 may overflow in T5; "
                     "fp32 is exact but doubles memory.")
# Optional loader inputs (at the end, so a workflow that leaves them out keeps its widget values).
TRANSFORMER_OPTIONS = {
    "weight_format": (list(WEIGHT_FORMATS), {"default": "default", "tooltip": "default: the transformer's weights "
                      "in the precision above. fp8_e4m3fn: stored in fp8 and computed in the precision above "
                      "(ComfyUI's fp8 weight dtype): half the memory of bf16, slightly less exact. LoRAs apply to "
                      "fp8 weights too. ComfyUI scaled-fp8 and mixed-precision files keep their own storage "
                      "either way (ComfyUI 0.4.0 or newer; older ones dequantize scaled fp8)."}),
    "attention": (list(COMFY_ATTENTION), {"default": "comfy", "tooltip": "All through ComfyUI's attention, so "
                  "Model Attention Backend and attention patches apply. comfy: what ComfyUI's launch flags chose "
                  "(--use-sage-attention, --use-flash-attention, ...). sdpa: PyTorch's scaled_dot_product_attention "
                  "(flash/memory-efficient kernels on CUDA; the reference's). sage: SageAttention (faster on recent "
                  "GPUs; needs `pip install sageattention`)."}),
}
TEXT_ENCODER_WEIGHTS_INPUT = (list(WEIGHT_FORMATS), {"default": "default", "tooltip": "default: T5 in the precision "
                               "above. fp8_e4m3fn: its Linear weights (but the feed-forward outputs) stored in fp8 "
                               "with a per-layer scale, computed in the precision above: 5.7 GiB instead of "
                               "9.1 GiB in bf16, with slightly less exact embeddings."})
TEXT_ENCODER_DEVICE_INPUT = (["default", "cpu"], {"default": "default", "tooltip": "default: T5 runs on ComfyUI's "
                             "text-encoder device while encoding, then is offloaded. cpu: it stays in CPU memory and "
                             "runs there (slower to encode, no VRAM; as Load CLIP's device cpu)."})


class TransformerSource(NamedTuple):
    """How a loader built the MODEL's transformer: the multi-GPU sampler's workers load it the same way
    (on the model, not only in cached_patcher_init, which ComfyUI before 0.33 lacks)."""

    path: str
    precision: str
    weight_format: str
    attention: str  # the engine's kernel for the workers (outside ComfyUI): "comfy" runs there as sdpa


def dtype_for(precision: str):
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    return DTYPES[precision]


def build_model(transformer_path: Path, precision: str, scale: ModelScale, weight_format=None, attention=None,
                scheduler_config: Optional[dict] = None, *, disable_dynamic: bool = False):
    """The native MODEL (a ModelPatcher around DropletVideoModel), its latents scaled by `scale`
    (the VAE config's factor the loader found: latent_scale.py).

    Also the MODEL's cached_patcher_init factory: ComfyUI 0.33 rebuilds a patcher through it with
    `disable_dynamic=True` (ModelPatcher.clone(force_deepcopy=True) in core Train LoRA, and every
    non-dynamic delegate). That asks for a plain ModelPatcher, which is the only kind built here.
    Without `scheduler_config` (a transformer loaded alone) the schedule is looked up beside it."""
    del disable_dynamic  # never dynamic: load_native_model wraps the model in a plain ModelPatcher
    weight_format, attention = weight_format or "default", attention or "comfy"
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight_format {weight_format!r}: use one of {', '.join(WEIGHT_FORMATS)}.")
    check_attention(attention)  # a missing `sageattention` fails here, before the slow part
    scheduler_config = scheduler_config or scheduler_config_for_transformer(transformer_path)
    patcher = load_native_model(transformer_path, dtype_for(precision), scale,
                                fp8_weights=weight_format == "fp8_e4m3fn", scheduler_config=scheduler_config)
    patcher.model.diffusion_model.use_attention(attention)
    patcher.model.droplet_source = TransformerSource(str(transformer_path), precision, weight_format,
                                                     "sdpa" if attention == "comfy" else attention)
    if hasattr(patcher, "cached_patcher_init"):  # ComfyUI 0.15.1+: Train LoRA, MultiGPU CFG Split
        patcher.cached_patcher_init = (build_model, (transformer_path, precision, scale, weight_format, attention,
                                                     scheduler_config))
    release_heap_when_freed(patcher.model)
    return patcher


def build_vae(path: Path, precision: str) -> DropletVae:
    module = load_vae(path, dtype_for(precision))
    release_heap_when_freed(module)
    return DropletVae(vae_patcher(module), str(path))


def build_text_encoder(encoder_folder: Path, tokenizer_folder: Path, precision: str,
                       device: str = "default", weight_format: str = "default") -> DropletTextEncoder:
    if device not in ("default", "cpu"):
        raise ValueError(f"unknown text encoder device {device!r}: use default (the GPU while encoding) or cpu.")
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight_format {weight_format!r}: use one of {', '.join(WEIGHT_FORMATS)}.")
    encoder = load_text_encoder(encoder_folder, tokenizer_folder, dtype_for(precision))
    if weight_format == "fp8_e4m3fn":
        quantize_t5(encoder.model)
    release_heap_when_freed(encoder.model)
    return DropletTextEncoder(text_encoder_patcher(encoder.model, on_cpu=device == "cpu"), encoder.tokenizer,
                              str(encoder_folder))

