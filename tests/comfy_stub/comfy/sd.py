"""Stand-in for comfy.sd.VAE (ComfyUI 0.33), its CogVideoX branch: what core *Load VAE* gives for
a CogVideoX/DropletVideo VAE file. Same detection (the decoder's conv_in and spatial-norm keys),
same conventions: encode takes IMAGE frames [F, H, W, 3] (or [B, F, H, W, 3]) in 0..1, crops
them to multiples of 8 and returns unscaled latents [B, 16, F_lat, h, w]; decode returns
[B, F, H, W, 3] in 0..1. No tiling (the real one tiles; the stand-in refuses)."""

import logging

import torch

import comfy.ldm.cogvideo.vae
import comfy.model_management as model_management
import comfy.model_patcher

COGVIDEOX_KEYS = ("decoder.conv_in.conv.weight", "decoder.mid_block.resnets.0.norm1.norm_layer.weight")
SPATIAL = 8


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        if not all(key in sd for key in COGVIDEOX_KEYS):
            raise NotImplementedError("the ComfyUI stand-in's VAE knows only the CogVideoX VAE")
        self.latent_channels = sd["encoder.conv_out.conv.weight"].shape[0] // 2
        self.latent_dim = 3
        self.first_stage_model = comfy.ldm.cogvideo.vae.AutoencoderKLCogVideoX(
            latent_channels=self.latent_channels).eval()
        self.device = device or model_management.vae_device()
        self.vae_dtype = dtype or torch.float32  # what ComfyUI picks on the CPU
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = model_management.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=model_management.vae_offload_device())
        missing, unexpected = self.first_stage_model.load_state_dict(sd, strict=False)
        if missing:
            logging.warning("Missing VAE keys %s", missing)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        height, width = pixel_samples.shape[-3:-1]
        top, left = height % SPATIAL // 2, width % SPATIAL // 2
        pixels = pixel_samples[..., top:top + height // SPATIAL * SPATIAL, left:left + width // SPATIAL * SPATIAL, :3]
        pixels = pixels.movedim(-1, 1)
        if pixels.ndim == 4:  # one video's frames
            pixels = pixels.movedim(1, 0).unsqueeze(0)
        model_management.load_models_gpu([self.patcher])
        with torch.no_grad():
            out = self.first_stage_model.encode((pixels * 2.0 - 1.0).to(self.device, self.vae_dtype))
        return out.to(self.output_device, torch.float32)

    def decode(self, samples_in: torch.Tensor) -> torch.Tensor:
        model_management.load_models_gpu([self.patcher])
        with torch.no_grad():
            out = self.first_stage_model.decode(samples_in.to(self.device, self.vae_dtype)).float()
        return out.add_(1.0).div_(2.0).clamp_(0.0, 1.0).to(self.output_device).movedim(1, -1)

    def encode_tiled(self, pixel_samples, *args, **kwargs):
        raise NotImplementedError("the ComfyUI stand-in's VAE has no tiled encode")

    def decode_tiled(self, samples, *args, **kwargs):
        raise NotImplementedError("the ComfyUI stand-in's VAE has no tiled decode")
