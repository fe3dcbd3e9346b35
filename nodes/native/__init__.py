"""DropletVideo as a native ComfyUI model.

ComfyUI owns the model: a `comfy.model_base.BaseModel` (model.py) whose diffusion model is
droplet_core's transformer with its layers built from ComfyUI's `operations` (layers.py,
diffusion_model.py), so ComfyUI casts weights on the fly, loads them partially, stores fp8 and
patches LoRAs as it does for its own models. The FPS value and the inpaint latents reach the
model through CONDITIONING (conditioning.py). Nothing here patches ComfyUI.
"""
