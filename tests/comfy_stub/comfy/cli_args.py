"""Stand-in for comfy.cli_args: the parsed command line the nodes read (`args`), with
ComfyUI's defaults for the options they use."""

import enum
from types import SimpleNamespace


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


args = SimpleNamespace(cpu=False, preview_method=LatentPreviewMethod.NoPreviews, preview_size=512)
