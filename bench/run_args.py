"""The command-line arguments that every one-run bench script takes (the video and the schedule)."""

DEFAULT_PROMPT = "A panda plays a guitar in a bamboo forest."


def add_video_args(parser, frames_flag: str = "--frames") -> None:
    """--width --height <frames_flag> --steps (required), --fps, --prompt: the same names the
    timed scripts get from bench/native.py and bench/engine.py (the reference's script says
    --video_length, as its inference.py)."""
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument(frames_flag, type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
