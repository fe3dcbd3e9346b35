"""DropletVideoPromptSchedule: one prompt per line -> a prompt per window of a long video."""

from ..droplet_core.prompt_schedule import check_prompts
from ..droplet_core.text import MAX_SEQUENCE_LENGTH, with_suffix
from .text_encode import encode_texts


def schedule_lines(prompts: str) -> list:
    """One prompt per line; the text's leading and trailing blank lines do not count."""
    lines = prompts.strip().splitlines()
    check_prompts(lines)
    return lines


class DropletVideoPromptSchedule:
    DESCRIPTION = ("A prompt per window for the DropletVideo Sampler's long_video: one prompt per line, in order. "
                   "With fewer prompts than windows they share the windows evenly (2 prompts over 5 windows: "
                   "1 1 1 2 2); more prompts than windows is an error. The predictions of neighbouring windows are "
                   "blended over their overlap, so the change of prompt is gradual. FPS and the start image still "
                   "come from the sampler's positive input.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("DROPLET_PROMPT_SCHEDULE",)
    RETURN_NAMES = ("prompt_schedule",)
    OUTPUT_TOOLTIPS = ("For the DropletVideo Sampler's prompt_schedule input.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "One prompt per line: line 1 "
                                       "for the first window(s), line 2 for the next, ... No empty lines."}),
                "append_quality_suffix": ("BOOLEAN", {"default": True, "tooltip": "Append the reference's quality "
                                                      "sentence to every prompt."}),
                "max_tokens": ("INT", {"default": MAX_SEQUENCE_LENGTH, "min": 1, "max": 1024, "tooltip":
                                       "T5 sequence length (reference CLI: 400); use the Text Encode node's value."}),
            },
            "optional": {
                "text_encoder": ("DROPLET_TEXT_ENCODER", {"tooltip": "From a DropletVideo loader."}),
                "clip": ("CLIP", {"tooltip": "Instead of text_encoder: ComfyUI's T5-XXL (Load CLIP, type cogvideox)."}),
            },
        }

    def encode(self, prompts, append_quality_suffix, max_tokens, text_encoder=None, clip=None):
        texts = [with_suffix(line, append_quality_suffix) for line in schedule_lines(prompts)]
        return (encode_texts(texts, max_tokens, text_encoder, clip, "DropletVideoPromptSchedule"),)
