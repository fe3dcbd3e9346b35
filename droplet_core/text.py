"""Prompt encoding with transformers' T5 encoder, as the reference pipeline does it."""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
import transformers
from packaging.version import Version
from transformers import T5EncoderModel, T5Tokenizer

from .weights import weight_files

logger = logging.getLogger(__name__)

# inference.py appends this to every prompt.
PROMPT_SUFFIX = ("The video is of high quality, and the view is very clear. High quality, masterpiece, "
                 "best quality, highres, ultra-detailed, fantastic.")
NEGATIVE_PROMPT = "The video is low quality, blurry, distortion. "
MAX_SEQUENCE_LENGTH = 400  # inference.py's value (the pipeline's own default is 226)
# from_pretrained's precision argument: `dtype` since transformers 4.56, `torch_dtype` before
# (4.50.3 passes an unknown `dtype` on to the model's constructor, which refuses it).
DTYPE_ARGUMENT = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def with_suffix(prompt: str, append_suffix: bool = True) -> str:
    return f"{prompt} {PROMPT_SUFFIX}" if append_suffix else prompt


@dataclass
class TextEncoder:
    tokenizer: T5Tokenizer
    model: T5EncoderModel

    @torch.no_grad()
    def encode(self, prompt: str, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
               device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """[1, max_sequence_length, d_model]: padded to max_length, truncated, no attention mask."""
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length {max_sequence_length} must be at least 1 (reference CLI: 400).")
        ids = self.tokenizer([prompt], padding="max_length", max_length=max_sequence_length, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        full = self.tokenizer([prompt], padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            logger.warning("prompt truncated to %d tokens (it has %d)", max_sequence_length, full.shape[-1])
        device = device if device is not None else self.model.device
        return self.model(ids.to(device))[0]


# What T5Tokenizer takes when a folder holds spiece.model alone: its own defaults.
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def load_tokenizer(folder: Union[str, Path]) -> T5Tokenizer:
    folder = Path(folder)
    if not (folder / "spiece.model").is_file():
        raise FileNotFoundError(f"{folder}/spiece.model is missing: the tokenizer folder of the release has "
                                f"spiece.model, {', '.join(TOKENIZER_FILES)}.")
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        logger.warning("%s has spiece.model but not %s: the tokenizer takes transformers' T5 defaults for what "
                       "they would say (100 extra tokens <extra_id_N>, </s> to end, <pad>, <unk>). If the prompt "
                       "embeddings look wrong, copy those files from the release's tokenizer/ folder.",
                       folder, " or ".join(missing))
    return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)


def load_text_encoder(encoder_folder: Union[str, Path], tokenizer_folder: Union[str, Path],
                      dtype: torch.dtype = torch.float32) -> TextEncoder:
    encoder_folder = Path(encoder_folder)
    weight_files(encoder_folder)  # refuses pickle-only folders with a clear message
    model = T5EncoderModel.from_pretrained(str(encoder_folder), **{DTYPE_ARGUMENT: dtype}, use_safetensors=True,
                                           local_files_only=True)
    return TextEncoder(load_tokenizer(tokenizer_folder), model.eval().requires_grad_(False))
