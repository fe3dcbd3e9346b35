"""The diffusion model that ComfyUI's BaseModel builds: droplet_core's transformer with
ComfyUI's layer classes and ComfyUI's call signature.

ComfyUI calls `forward(x, timestep, context, fps=..., transformer_options=...)` with x in its
latent layout [B, C, F, H, W], C = 16 noise channels followed by the 17 concat channels (mask,
masked-video latents; model.py). The engine's `predict` works in [B, F, C, H, W].
"""

import comfy.patcher_extension
import torch

from ...droplet_core.configs import TransformerConfig, config_from_dict
from ...droplet_core.positional import check_latent_frames_fit
from ...droplet_core.transformer import DropletVideoTransformer3DModel, run_block
from ..context_windows import table_remedy
from .layers import use_operations

BLOCK_PATCH = "double_block"  # the key ComfyUI's DiT patches (SkipLayerGuidanceDiT) replace blocks under


class ComfyDropletTransformer(DropletVideoTransformer3DModel):
    def __init__(self, droplet_config: dict, device=None, dtype=None, operations=None, **_unused):
        """`droplet_config` is transformer/config.json. The layers are created on the meta device;
        BaseModel.load_model_weights (model.py) assigns the weights."""
        config = config_from_dict(TransformerConfig, droplet_config, "the DropletVideo model config")
        with torch.device("meta"):
            super().__init__(config)
            if operations is not None:
                use_operations(self, operations, dtype=dtype)
        self.dtype = dtype

    def forward(self, x, timestep, context, fps=None, control=None, transformer_options=None, **kwargs):
        transformer_options = transformer_options or {}
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timestep, context, fps, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, fps, transformer_options, **kwargs):
        if fps is None:
            raise ValueError("DropletVideo needs its FPS condition: build the conditioning with DropletVideo Image "
                             "Encode (start/end frame) or DropletVideo Empty Conditioning (text-to-video); they "
                             "set fps on positive and negative.")
        noise_channels = self.config.out_channels or self.config.in_channels
        hidden = x.movedim(1, 2)  # [B, F, C, H, W]
        inpaint = hidden[:, :, noise_channels:] if hidden.shape[2] > noise_channels else None
        frames, height, width = hidden.shape[1], hidden.shape[3], hidden.shape[4]
        # A core sampler's call (one per context window when the MODEL has them): a clear refusal
        # past the table, before the positional rows give the engine's.
        check_latent_frames_fit(self.config, frames, remedy=f"{table_remedy(self.config)}, or use the "
                                f"DropletVideo Sampler's long_video")
        out = self.predict(hidden[:, :, :noise_channels], context, timestep, fps.reshape(-1)[:1].float(),
                           inpaint_latents=inpaint,
                           image_rotary_emb=self.rotary(frames, height, width, device=x.device),
                           block_runner=patched_block_runner(transformer_options))
        return out.movedim(2, 1)


def patched_block_runner(transformer_options: dict):
    """run_block, or ComfyUI's replacement for block i when a DiT patch set one (patches_replace['dit'])."""
    replaced = transformer_options.get("patches_replace", {}).get("dit", {})
    if not replaced:
        return run_block

    def runner(index, block, hidden, encoder_hidden, temb, rotary):
        patch = replaced.get((BLOCK_PATCH, index))
        if patch is None:
            return run_block(index, block, hidden, encoder_hidden, temb, rotary)

        def original(args):
            img, txt = run_block(index, block, args["img"], args["txt"], args["vec"], args["pe"])
            return {"img": img, "txt": txt}

        out = patch({"img": hidden, "txt": encoder_hidden, "vec": temb, "pe": rotary,
                     "transformer_options": transformer_options}, {"original_block": original})
        return out["img"], out["txt"]

    return runner


class EngineView:
    """The engine's view of the native diffusion model (what droplet_core.sampling.denoising_loop and
    SlidingWindowTransformer call): calls go to `predict`, in the engine's [B, F, C, H, W]."""

    def __init__(self, model: ComfyDropletTransformer):
        self.model, self.config = model, model.config

    def __call__(self, *args, **kwargs):
        return self.model.predict(*args, **kwargs)

    def rotary(self, frames: int, height: int, width: int, device=None):
        return self.model.rotary(frames, height, width, device)
