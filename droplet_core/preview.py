"""A cheap RGB picture of video latents while sampling, for progress previews.

The VAE has no published latent-to-RGB factors, so the map is fitted per run: a least-squares
linear map (16 channels + bias -> RGB) from the start image's latent frame to the start image
shrunk to latent size. The first latent frame of the causal VAE encodes the first frame alone,
so the pair lines up pixel for pixel. Without a start image (text- and video-to-video) the map
is fitted on `color_pattern`, a built-in picture with every hue and brightness.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

Projection = Tuple[torch.Tensor, torch.Tensor]  # (weight [3, C], bias [3])


def fit_rgb_projection(latent_frame: torch.Tensor, image: torch.Tensor) -> Projection:
    """latent_frame [C, h, w]; image [3, H, W] in 0..1 -> the map from latents to that image."""
    channels, height, width = latent_frame.shape
    target = F.interpolate(image[None].float().cpu(), size=(height, width), mode="area")[0]
    inputs = torch.cat([latent_frame.float().cpu().reshape(channels, -1), torch.ones(1, height * width)]).T
    solution = torch.linalg.lstsq(inputs, target.reshape(3, -1).T).solution  # [C + 1, 3]
    return solution[:channels].T.contiguous(), solution[channels].contiguous()


def color_pattern(size: int = 128) -> torch.Tensor:
    """[3, size, size] in 0..1: hue across, brightness down, and a saturation ramp, so the fit
    sees varied colours in every latent cell."""
    ramp = torch.linspace(0, 1, size)
    hue, value = ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)
    saturation = 0.5 + 0.5 * torch.cos(6.2832 * 3 * (ramp[:, None] + ramp[None, :]) / 2)
    phases = torch.tensor([0.0, 1 / 3, 2 / 3])[:, None, None]
    color = 0.5 + 0.5 * torch.cos(6.2832 * (hue[None] - phases))  # three phase-shifted hue waves
    return value[None] * (1 - saturation[None] + saturation[None] * color)


def latents_to_rgb(latent_frame: torch.Tensor, projection: Projection) -> torch.Tensor:
    """latent_frame [C, h, w] -> uint8 [h, w, 3]."""
    weight, bias = projection
    rgb = torch.einsum("chw,rc->hwr", latent_frame.float().cpu(), weight) + bias
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


def rescaled(projection: Projection, factor: float) -> Projection:
    """The same map for latents multiplied by `factor` (LATENT's unscaled latents -> the model's)."""
    weight, bias = projection
    return weight / factor, bias
