"""The diffusion model that ComfyUI's BaseModel builds: droplet_core's transformer with
ComfyUI's layer classes and ComfyUI's call signature.

ComfyUI calls `forward(x, timestep, context, fps=..., transformer_options=...)` (fps: DropletVideo's
condition, ignored by Droplet3D: fps_condition.py) with x in its
latent layout [B, C, F, H, W], C = 16 noise channels followed by the 17 concat channels (mask,
masked-video latents; model.py). The engine's `predict` works in [B, F, C, H, W]. The blocks'
attention is ComfyUI's (attention.py), called with each call's transformer_options; the pack's
sampler calls the same forward (EngineView), so the MODEL's wrappers and patches reach both.
"""

import comfy.patcher_extension
import torch

from ...droplet_core.axes import channels_first, frames_first
from ...droplet_core.attention import set_attention
from ...droplet_core.configs import TransformerConfig, config_from_dict
from ...droplet_core.positional import check_latent_frames_fit
from ...droplet_core.transformer import DropletVideoTransformer3DModel, run_block
from ..context_windows import table_remedy
from ..fps_condition import fps_for_transformer
from .attention import comfy_attention_fn
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
        self.in_channels = config.in_channels  # read by core patches (RenormCFG), as on core's own models
        self.use_attention("comfy")

    def use_attention(self, choice: str) -> None:
        """The loaders' `attention` choice: comfy, sdpa or sage, each through ComfyUI (attention.py)."""
        set_attention(self, "sdpa" if choice == "comfy" else choice, comfy_attention_fn(choice))

    def forward(self, x, timestep, context, fps=None, control=None, transformer_options=None, **kwargs):
        transformer_options = transformer_options or {}
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timestep, context, fps, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, fps, transformer_options, block_runner=run_block, **kwargs):
        """`block_runner` is the pack sampler's (its step cache), inside ComfyUI's block replacements."""
        fps = fps_for_transformer(self, fps)  # DropletVideo's condition; None on Droplet3D, which has none
        noise_channels = self.config.noise_channels
        hidden = frames_first(x)  # [B, F, C, H, W]
        inpaint = hidden[:, :, noise_channels:] if hidden.shape[2] > noise_channels else None
        frames, height, width = hidden.shape[1], hidden.shape[3], hidden.shape[4]
        # A core sampler's call (one per context window when the MODEL has them): a clear refusal
        # past the table, before the positional rows give the engine's.
        check_latent_frames_fit(self.config, frames, remedy=f"{table_remedy(self.config)}, or use the "
                                f"DropletVideo Sampler's long_video")
        out = self.predict(hidden[:, :, :noise_channels], context, timestep, fps,
                           inpaint_latents=inpaint,
                           image_rotary_emb=self.rotary(frames, height, width, device=x.device),
                           block_runner=patched_block_runner(transformer_options, block_runner),
                           attention_options=transformer_options)
        return channels_first(out)


def patched_block_runner(transformer_options: dict, inner=run_block):
    """`inner`, or ComfyUI's replacement for block i when a DiT patch set one (patches_replace['dit'])."""
    replaced = transformer_options.get("patches_replace", {}).get("dit", {})
    if not replaced:
        return inner

    def runner(index, block, hidden, encoder_hidden, temb, rotary, attention_options=None):
        patch = replaced.get((BLOCK_PATCH, index))
        if patch is None:
            return inner(index, block, hidden, encoder_hidden, temb, rotary, attention_options)

        def original(args):
            img, txt = inner(index, block, args["img"], args["txt"], args["vec"], args["pe"],
                             args.get("transformer_options", attention_options))
            return {"img": img, "txt": txt}

        out = patch({"img": hidden, "txt": encoder_hidden, "vec": temb, "pe": rotary,
                     "transformer_options": transformer_options}, {"original_block": original})
        return out["img"], out["txt"]

    return runner


class EngineView:
    """The engine's view of the native diffusion model (what droplet_core.sampling.denoising_loop and
    SlidingWindowTransformer call), in the engine's [B, F, C, H, W]: calls go through the model's
    ComfyUI forward with the MODEL's transformer_options (its diffusion-model wrappers, DiT block
    replacements, attention override), the same arithmetic as `predict`."""

    def __init__(self, model: ComfyDropletTransformer, transformer_options: dict):
        self.model, self.config, self.transformer_options = model, model.config, transformer_options

    def __call__(self, hidden_states, encoder_hidden_states, timestep, fps, inpaint_latents=None,
                 image_rotary_emb=None, block_runner=run_block):
        """`image_rotary_emb` is the one the forward builds for these latents (the loop's, or a window's)."""
        x = hidden_states if inpaint_latents is None else torch.cat([hidden_states, inpaint_latents], dim=2)
        out = self.model(channels_first(x), timestep, encoder_hidden_states, fps=fps,
                         transformer_options=self.transformer_options, block_runner=block_runner)
        return frames_first(out)

    def rotary(self, frames: int, height: int, width: int, device=None):
        return self.model.rotary(frames, height, width, device)
