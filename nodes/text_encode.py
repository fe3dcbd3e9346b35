"""DropletVideoTextEncode: prompt and negative prompt to T5 embeddings (CONDITIONING)."""

import logging

import comfy.model_management

from ..droplet_core.text import MAX_SEQUENCE_LENGTH, NEGATIVE_PROMPT, with_suffix
from .components import module_dtype
from .memory import text_memory

logger = logging.getLogger(__name__)


def encode_with_clip(clip, text: str, max_tokens: int):
    """ComfyUI's T5 (CLIPLoader type cogvideox): padded to max_tokens with no attention mask and
    no prompt weighting, as the reference tokenizes; longer prompts are cut, keeping the end token."""
    tokens = clip.tokenize(text, min_length=max_tokens, disable_weights=True)
    tokens = {key: [batch[:max_tokens - 1] + batch[-1:] if len(batch) > max_tokens else batch for batch in batches]
              for key, batches in tokens.items()}
    return clip.encode_from_tokens(tokens)


def encode_texts(texts, max_tokens: int, text_encoder=None, clip=None, node: str = "DropletVideoTextEncode") -> list:
    """Each text's embeddings [1, T, D] on the intermediate device, with DropletVideo's T5 or a CLIP."""
    if text_encoder is not None:
        if clip is not None:
            logger.warning("both text_encoder and clip are connected: using text_encoder")
        hidden = text_encoder.patcher.model.module.config.d_model
        dtype = module_dtype(text_encoder.patcher.model.module)
        encoder = text_encoder.on_device(text_memory(max_tokens, hidden, dtype))
        device = text_encoder.patcher.load_device
        embeds = [encoder.encode(text, max_tokens, device=device) for text in texts]
    elif clip is not None:
        embeds = [encode_with_clip(clip, text, max_tokens) for text in texts]
    else:
        raise ValueError(f"{node} needs a text encoder: connect text_encoder (DropletVideo loader) or clip (Load "
                         f"CLIP, type cogvideox).")
    out = comfy.model_management.intermediate_device()
    return [e.to(out) for e in embeds]


class DropletVideoTextEncode:
    DESCRIPTION = ("Encodes the prompt and the negative prompt with T5, as the reference does (padded to max_tokens, "
                   "quality suffix appended to the prompt). Takes DropletVideo's T5 loader output, or a ComfyUI CLIP "
                   "(Load CLIP, type cogvideox, t5xxl weights) instead.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The prompt's embeddings (connect to DropletVideo Image Encode or Empty Conditioning, which add "
                       "the image and the FPS).", "The negative prompt's embeddings (used when cfg > 1).")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What the video shows and how the "
                                      "camera moves."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": NEGATIVE_PROMPT,
                                               "tooltip": "What to steer away from (the reference's default)."}),
                "append_quality_suffix": ("BOOLEAN", {"default": True, "tooltip": "Append the reference's quality "
                                                      "sentence to the prompt (inference.py always does)."}),
                "max_tokens": ("INT", {"default": MAX_SEQUENCE_LENGTH, "min": 1, "max": 1024, "tooltip":
                                       "T5 sequence length: prompts are padded or cut to it. DropletVideo's inference.py uses 400, "
                                       "Droplet3D's 450 (the Droplet3D workflows set 450); the sampler warns when "
                                       "this differs from its MODEL's reference."}),
            },
            "optional": {
                "text_encoder": ("DROPLET_TEXT_ENCODER", {"tooltip": "From a DropletVideo loader."}),
                "clip": ("CLIP", {"tooltip": "Instead of text_encoder: ComfyUI's T5-XXL (Load CLIP, type cogvideox)."}),
            },
        }

    def encode(self, prompt, negative_prompt, append_quality_suffix, max_tokens, text_encoder=None, clip=None):
        texts = (with_suffix(prompt, append_quality_suffix), negative_prompt)
        return tuple([[e, {}]] for e in encode_texts(texts, max_tokens, text_encoder, clip))
