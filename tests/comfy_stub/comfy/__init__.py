"""Stand-in for ComfyUI's `comfy` package: only what DropletVideo's nodes call, with the same
names and signatures as ComfyUI 0.33 (comfy/model_management.py, model_patcher.py, utils.py,
lora.py, weight_adapter/).

Tests run against it by default; set COMFYUI_PATH to a ComfyUI checkout to run them against
the real modules instead.
"""
