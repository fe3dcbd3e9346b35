"""DropletVideo's ComfyUI model type: latent format, model config and BaseModel.

Sampling is the release scheduler's: v-prediction on linear betas 0.00085-0.012 (1000 steps)
rescaled to zero terminal SNR, read from the same scheduler config the DropletVideo Sampler's
DDIM is built on (`sampling_settings`). LATENT holds the VAE's latents unscaled, [B, 16, F, H, W], as
ComfyUI's video models keep them; the latent format multiplies by the VAE's scaling_factor on
the way in and divides on the way out.
"""

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.supported_models_base
import torch

from ...droplet_core.configs import VaeConfig
from ...droplet_core.positional import fps_tensor
from ...droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG
from ..latent_scale import SCALE, ModelScale, check_core_sampler
from ..memory import transformer_memory
from .diffusion_model import ComfyDropletTransformer

MASK_CHANNELS = 1
DEFAULT_TEXT_TOKENS = 226  # for memory estimates when the prompt's length is not known yet
# diffusers' beta schedules by ComfyUI's names (ComfyUI's "linear" spaces the square roots).
BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear"}


def model_sampling_settings(scheduler_config: dict) -> dict:
    """ComfyUI's model-sampling settings for a v-prediction DDIM-family scheduler config (the
    release's scheduler/scheduler_config.json, or droplet_core.sampling.COGVIDEOX_SCHEDULER_CONFIG)."""
    schedule = scheduler_config.get("beta_schedule", "linear")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if schedule not in BETA_SCHEDULES or scheduler_config.get("trained_betas") is not None or \
            prediction != "v_prediction":
        raise ValueError(f"scheduler config with beta_schedule {schedule!r}, prediction_type {prediction!r}"
                         f"{' and trained_betas' if scheduler_config.get('trained_betas') is not None else ''}: "
                         f"DropletVideo's MODEL samples v-prediction on a linear or scaled_linear schedule, as the "
                         f"release's scheduler/scheduler_config.json; use that file.")
    return {"linear_start": scheduler_config["beta_start"], "linear_end": scheduler_config["beta_end"],
            "beta_schedule": BETA_SCHEDULES[schedule], "timesteps": scheduler_config.get("num_train_timesteps", 1000),
            "zsnr": bool(scheduler_config.get("rescale_betas_zero_snr", False))}


class DropletVideoLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = 16
    latent_dimensions = 3
    temporal_downscale_ratio = 4
    spacial_downscale_ratio = 8

    # The class default only until the loader sets the one it read (loading.model_config_for).
    def __init__(self, scale: ModelScale = ModelScale(VaeConfig().scaling_factor, "diffusers' class default", True)):
        self.scale_factor, self.source, self.fallback = scale


class DropletVideoModelConfig(comfy.supported_models_base.BASE):
    """`unet_config` = {"droplet_config": transformer/config.json}; the pack builds the model itself
    (loading.py), so this config is never matched against ComfyUI's detected checkpoints."""

    unet_config = {"image_model": "dropletvideo"}
    unet_extra_config = {}
    sampling_settings = model_sampling_settings(COGVIDEOX_SCHEDULER_CONFIG)  # loading.py: the loaded folder's
    latent_format = DropletVideoLatentFormat
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def get_model(self, state_dict=None, prefix="", device=None):
        return DropletVideoModel(self, device=device)


class DropletVideoModel(comfy.model_base.BaseModel):
    def __init__(self, model_config, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.V_PREDICTION, device=device,
                         unet_model=ComfyDropletTransformer)

    @property
    def droplet_config(self):
        return self.diffusion_model.config

    def concat_cond(self, **kwargs):
        """The reference's 17 inpaint channels, [(1 - mask) x scaling_factor ; masked-video latents x
        scaling_factor], from the conditioning's concat_mask (core's convention: 1 = generate; a
        several-channel mask, as WAN's first-last-frame node makes, counts by its mean) and
        concat_latent_image; zeros (every frame masked, the reference's text-to-video input) when
        the conditioning has none.

        Core samplers call this; they scale the sampled latents by the MODEL's factor, so a
        conditioning recorded at another VAE's is refused (latent_scale.py)."""
        check_core_sampler(self.latent_format, kwargs.get(SCALE))
        return self.inpaint_channels(kwargs["noise"], kwargs.get("concat_latent_image"), kwargs.get("concat_mask"),
                                     self.latent_format.scale_factor, kwargs.get("device"))

    def inpaint_channels(self, noise, image, mask, scale: float, device=None):
        """concat_cond's channels at latent scale `scale` (the DropletVideo samplers pass the VAE's)."""
        extra = self.droplet_config.in_channels - noise.shape[1]
        if extra <= 0:
            return None
        if image is None:
            return torch.zeros((noise.shape[0], extra, *noise.shape[2:]), dtype=noise.dtype, device=noise.device)
        check_concat_shape(image, mask, noise, extra)
        device = noise.device if device is None else device
        mask = mask.to(device, image.dtype)
        if mask.shape[1] != MASK_CHANNELS:
            mask = mask.mean(dim=1, keepdim=True)
        given = (1 - mask) * scale  # the reference scales its mask channel too
        concat = torch.cat([given, image.to(device) * scale], dim=1)
        return concat.expand(noise.shape[0], *concat.shape[1:])

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        fps = kwargs.get("fps")
        if fps is not None:
            out["fps"] = comfy.conds.CONDRegular(fps_tensor(fps))
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        """The offload planner's activation estimate (droplet_core/offload/plan.py) for this latent
        grid; input_shape is [batch, channels, frames, height, width]. It replaces core's estimate
        (latent area x the config's memory_usage_factor, the only reader of that factor in ComfyUI
        0.33 and 0.8.0), so the model config sets no memory_usage_factor."""
        batch, _, frames, height, width = input_shape
        text = cond_shapes.get("c_crossattn") if cond_shapes else None
        tokens = text[0][1] if text else DEFAULT_TEXT_TOKENS
        dtype = self.manual_cast_dtype or self.get_dtype()
        return transformer_memory(self.droplet_config, (frames, height, width), tokens, batch, dtype)


def check_concat_shape(image, mask, noise, extra_channels: int) -> None:
    if mask is None or image.shape[1] + MASK_CHANNELS != extra_channels or image.shape[2:] != noise.shape[2:] or \
            mask.ndim != noise.ndim or mask.shape[2:] != noise.shape[2:]:
        raise ValueError(
            f"the image conditioning ({None if image is None else tuple(image.shape)} latents, mask "
            f"{None if mask is None else tuple(mask.shape)}) does not fit the sampled latent {tuple(noise.shape)}: "
            f"give the conditioning node and the latent the same width, height and frame count (use the latent "
            f"output of DropletVideo Image Encode).")
