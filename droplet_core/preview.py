"""A cheap RGB picture of video latents while sampling, for progress previews.

The VAE has no published latent-to-RGB factors, so the map is fitted per run: a least-squares
linear map (16 channels + bias -> RGB) from the start image's latent frame to the start image
shrunk to latent size. The first latent frame of the causal VAE encodes the first frame alone,
so the pair lines up pixel for pixel.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

Projection = Tuple[torch.Tensor, torch.Tensor]  # (weight [3, C], bias [3])


def fit_rgb_projection(latent_frame: torch.Tensor, image: torch.Tensor) -> Projection:
    """latent_frame [C, h, w]; image [3, H, W] in 0..1 -> the map from latents to that image."""
    channels, height, width = latent_frame.shape
    target = F.interpolate(image[None].float(), size=(height, width), mode="area")[0]
    inputs = torch.cat([latent_frame.float().reshape(channels, -1), torch.ones(1, height * width)]).T
    solution = torch.linalg.lstsq(inputs.cpu(), target.reshape(3, -1).T.cpu()).solution  # [C + 1, 3]
    return solution[:channels].T.contiguous(), solution[channels].contiguous()


def latents_to_rgb(latent_frame: torch.Tensor, projection: Projection) -> torch.Tensor:
    """latent_frame [C, h, w] -> uint8 [h, w, 3]."""
    weight, bias = projection
    rgb = torch.einsum("chw,rc->hwr", latent_frame.float().cpu(), weight) + bias
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
