"""DropletVideo engine: loading, model, conditioning, sampling, video IO. Never imports ComfyUI."""
