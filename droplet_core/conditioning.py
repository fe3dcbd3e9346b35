"""The reference's image-to-video conditioning: mask video, masked video, inpaint latents.

Pixel videos here are [B, C, F, H, W] (what the VAE takes); latents leave in [B, F, C, H, W].
"""

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .axes import channels_first, frames_first
from .vae_ops import encode_mode

NOISE_AUG_STRENGTH = 0.0563


def resize_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """PIL's default filter (bicubic), as the reference's `Image.resize((W, H))`."""
    return image.convert("RGB").resize((width, height))


def _frames_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W] uint8


def i2v_video_and_mask(frames: int, width: int, height: int, start: Optional[Image.Image] = None,
                       end: Optional[Image.Image] = None):
    """(video 0..1 [1, 3, F, H, W], mask 0/255 [1, 1, F, H, W]) as get_image_to_video_latent builds them.

    The start image is tiled over all frames; the mask is 0 where a frame is given (first, and
    last with an end image) and 255 elsewhere. Without images: zeros and an all-255 mask (T2V).
    """
    if start is None:
        return torch.zeros(1, 3, frames, height, width), torch.ones(1, 1, frames, height, width) * 255
    start = resize_image(start, width, height)
    video = torch.tile(_frames_tensor(start)[None, :, None], [1, 1, frames, 1, 1])
    mask = torch.zeros_like(video[:, :1])
    mask[:, :, 1:] = 255
    if end is not None:
        video[:, :, -1:] = _frames_tensor(resize_image(end, width, height))[None, :, None]
        mask[:, :, -1:] = 0
    return video / 255, mask


def augmentation_noise(video_shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Quirk 7: the reference draws this from the global RNG on a permuted (non-contiguous)
    tensor; drawing in that memory order from a seeded generator gives the same numbers."""
    b, c, f, h, w = video_shape
    return channels_first(torch.empty(b, f, c, h, w)).normal_(generator=generator)


def resize_mask_first_frame(mask: torch.Tensor, latent_shape: Sequence[int]) -> torch.Tensor:
    """The reference's resize_mask: frame 0 alone to one latent frame, the rest to the others."""
    frames, height, width = latent_shape
    first = F.interpolate(mask[:, :, :1], size=[1, height, width], mode="trilinear", align_corners=False)
    if frames == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=[frames - 1, height, width], mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def masked_video(video: torch.Tensor, mask: torch.Tensor, noise_aug_strength: Optional[float] = None,
                 noise_generator: Optional[torch.Generator] = None):
    """(the masked video in -1..1, the binarised mask 0/1) that the reference VAE-encodes.

    `video` is 0..1, `mask` 0/255 as from i2v_video_and_mask; masked frames are -1 (black)."""
    init_video = (2.0 * video - 1.0).to(torch.float32)  # VaeImageProcessor normalisation
    mask = (mask / 255 >= 0.5).to(torch.float32)  # binarised, as the mask processor does
    mask_tile = torch.tile(mask, [1, 3, 1, 1, 1])
    masked = init_video * (mask_tile < 0.5) + torch.ones_like(init_video) * (mask_tile > 0.5) * -1
    if noise_aug_strength:
        sigma = torch.ones((masked.shape[0],)) * noise_aug_strength
        noise = augmentation_noise(masked.shape, noise_generator) * sigma[:, None, None, None, None]
        masked = masked + torch.where(masked == -1, torch.zeros_like(masked), noise)
    return masked, mask


def inpaint_from_latents(masked_latents: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """[1, F_lat, 1 + 16, h, w] from the masked video's unscaled latents [1, 16, F_lat, h, w] and
    the binarised mask of masked_video: (1 - mask) resized, then the latents, both x scaling."""
    masked_latents = masked_latents * scaling
    mask_latents = resize_mask_first_frame(1 - mask, masked_latents.shape[2:]).to(masked_latents.device) * scaling
    return torch.cat([frames_first(mask_latents), frames_first(masked_latents)], dim=2)


def all_masked(mask: torch.Tensor) -> bool:
    """Text-to-video: the reference gives zeros for both parts of the inpaint input."""
    return bool((mask == 255).all())


def inpaint_latents(vae, video: torch.Tensor, mask: torch.Tensor, latent_shape: Sequence[int],
                    dtype: torch.dtype, noise_aug_strength: Optional[float] = None,
                    noise_generator: Optional[torch.Generator] = None, tiled: bool = False) -> torch.Tensor:
    """[1, F_lat, 1 + 16, H/8, W/8]: (1 - mask) resized, then the VAE-encoded masked video.

    `video` is 0..1, `mask` 0/255 as from i2v_video_and_mask; `latent_shape` is (F_lat, H/8, W/8).
    An all-255 mask (text-to-video) gives zeros for both parts, as the reference does.
    """
    frames, height, width = latent_shape
    if all_masked(mask):
        return torch.zeros(1, frames, 1 + vae.config.latent_channels, height, width, dtype=dtype)
    masked, mask = masked_video(video, mask, noise_aug_strength, noise_generator)
    return inpaint_from_latents(encode_mode(vae, masked, tiled=tiled), mask, vae.config.scaling_factor).to(dtype)
