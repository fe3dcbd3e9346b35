"""DropletVideo's ComfyUI nodes: one node per file, each a thin adapter over droplet_core."""

from .empty_conditioning import DropletVideoEmptyConditioning
from .extend import DropletVideoExtend
from .fps_sweep import DropletVideoFPSSweep
from .image_encode import DropletVideoImageEncode
from .join_segments import DropletVideoJoinSegments
from .lora_loader import DropletVideoLoraLoader
from .model_loader import DropletVideoModelLoader
from .multi_gpu_sampler import DropletVideoMultiGPUSampler
from .prompt_schedule import DropletVideoPromptSchedule
from .resolution_bucket import DropletVideoResolutionBucket
from .save_quantized import DropletVideoSaveQuantized
from .sampler import DropletVideoSampler
from .t5_loader import DropletVideoT5Loader
from .text_encode import DropletVideoTextEncode
from .transformer_loader import DropletVideoTransformerLoader
from .vae_decode import DropletVideoVAEDecode
from .vae_encode import DropletVideoVAEEncode
from .vae_loader import DropletVideoVAELoader

NODE_DISPLAY_NAME_MAPPINGS = {
    "DropletVideoModelLoader": "DropletVideo Model Loader",
    "DropletVideoTransformerLoader": "DropletVideo Transformer Loader",
    "DropletVideoVAELoader": "DropletVideo VAE Loader",
    "DropletVideoT5Loader": "DropletVideo T5 Loader",
    "DropletVideoLoraLoader": "DropletVideo LoRA Loader",
    "DropletVideoTextEncode": "DropletVideo Text Encode",
    "DropletVideoImageEncode": "DropletVideo Image Encode (start/end frame)",
    "DropletVideoEmptyConditioning": "DropletVideo Empty Conditioning (text-to-video)",
    "DropletVideoResolutionBucket": "DropletVideo Resolution Bucket",
    "DropletVideoSampler": "DropletVideo Sampler",
    "DropletVideoMultiGPUSampler": "DropletVideo Sampler (multi-GPU)",
    "DropletVideoFPSSweep": "DropletVideo FPS Sweep",
    "DropletVideoVAEDecode": "DropletVideo VAE Decode",
    "DropletVideoVAEEncode": "DropletVideo VAE Encode (video-to-video)",
    "DropletVideoExtend": "DropletVideo Extend (continue a video)",
    "DropletVideoJoinSegments": "DropletVideo Join Segments",
    "DropletVideoPromptSchedule": "DropletVideo Prompt Schedule (long video)",
    "DropletVideoSaveQuantized": "DropletVideo Save Quantized",
}
NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    DropletVideoModelLoader, DropletVideoTransformerLoader, DropletVideoVAELoader, DropletVideoT5Loader,
    DropletVideoLoraLoader, DropletVideoTextEncode, DropletVideoImageEncode, DropletVideoEmptyConditioning,
    DropletVideoResolutionBucket, DropletVideoSampler, DropletVideoMultiGPUSampler, DropletVideoFPSSweep,
    DropletVideoVAEDecode, DropletVideoVAEEncode, DropletVideoExtend, DropletVideoJoinSegments,
    DropletVideoPromptSchedule, DropletVideoSaveQuantized)}
