"""A prompt per window of a long video (long_video.py's sliding windows).

Rule for P prompts over W windows: P must be 1..W; window w takes prompt floor(w * P / W), so
the prompts share the windows evenly in order (P = W: one each; P = 1: the same prompt
everywhere; 2 prompts over 5 windows: 0 0 0 1 1). More prompts than windows are refused (a
prompt would be dropped). Each window is predicted with its own text, and the windows'
predictions are blended over their overlap by the same ramps as always, so the change from one
prompt to the next is spread over the shared latent frames.
"""

from typing import List, Sequence


def check_prompts(prompts: Sequence[str]) -> None:
    if not prompts:
        raise ValueError("the prompt schedule is empty: give one prompt per window (one per line).")
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {index + 1} of the schedule is empty: write a prompt there or remove the "
                             f"line (the schedule has one prompt per line).")


def window_prompts(prompt_count: int, window_count: int) -> List[int]:
    """The prompt index of each window."""
    if prompt_count > window_count:
        raise ValueError(f"{prompt_count} prompts for {window_count} window(s): a schedule gives each window one "
                         f"prompt, so use at most {window_count} prompts, or more frames (long_video on, with frames "
                         f"beyond the model's window) to get more windows.")
    return [w * prompt_count // window_count for w in range(window_count)]
