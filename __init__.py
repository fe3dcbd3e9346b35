"""ComfyUI-DropletVideo: DropletVideo image-to-video nodes for ComfyUI (engine: droplet_core/)."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
