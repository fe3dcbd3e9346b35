"""Stand-in for comfy.weight_adapter (ComfyUI 2025+): weight patches as adapter objects."""

from .base import WeightAdapterBase
from .lora import LoRAAdapter

adapters = [LoRAAdapter]
adapter_maps = {"LoRA": LoRAAdapter}
