"""DropletVideo's positional embeddings: the sin-cos table and how the reference reads it.

The reference builds one 3D sin-cos table at the config's grid (in float64, as diffusers 0.32
did with numpy), stores it behind `max_text_seq_length` zero rows, and at run time:
- interpolates the video rows trilinearly to the requested H/2 x W/2, but NOT in time;
- gives the text tokens the first `text_len` rows of the stored table (quirk 1: with 400
  text tokens, tokens 226..399 receive video rows 0..173).
"""

import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from .configs import TransformerConfig

# Quirk 1: the reference slices the video part of the table at this hard-coded row.
REFERENCE_TEXT_ROWS = 226


def _sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_table_3d(config: TransformerConfig) -> torch.Tensor:
    """[frames * rows * cols, inner_dim] float32, frame-major then row then column."""
    dim, p = config.inner_dim, config.patch_size
    rows, cols, frames = config.sample_height // p, config.sample_width // p, config.latent_frames
    if dim % 16 != 0:
        raise ValueError(f"inner_dim {dim} must be divisible by 16 for the 3D sin-cos table.")
    spatial_dim, temporal_dim = 3 * dim // 4, dim // 4

    # Grid positions are float32 (as numpy computed them), the trigonometry float64.
    grid_w = torch.arange(cols, dtype=torch.float32) / config.spatial_interpolation_scale
    grid_h = torch.arange(rows, dtype=torch.float32) / config.spatial_interpolation_scale
    mesh_w, mesh_h = torch.meshgrid(grid_w, grid_h, indexing="xy")  # [rows, cols] each
    spatial = torch.cat([_sincos_1d(spatial_dim // 2, mesh_w), _sincos_1d(spatial_dim // 2, mesh_h)], dim=1)
    grid_t = torch.arange(frames, dtype=torch.float32) / config.temporal_interpolation_scale
    temporal = _sincos_1d(temporal_dim, grid_t)

    spatial = spatial[None].expand(frames, -1, -1)
    temporal = temporal[:, None].expand(-1, rows * cols, -1)
    return torch.cat([temporal, spatial], dim=-1).reshape(-1, dim).to(torch.float32)


def check_text_rows(config: TransformerConfig, source: str) -> None:
    """The additive table works only with max_text_seq_length 226: the reference slices its video
    part at row 226 whatever the field says (quirk 1), and any other value fails there."""
    if config.use_rotary_positional_embeddings or config.max_text_seq_length == REFERENCE_TEXT_ROWS:
        return
    raise ValueError(
        f"{source}: max_text_seq_length is {config.max_text_seq_length}, but a model with the sin-cos "
        f"positional table (use_rotary_positional_embeddings false) runs only with {REFERENCE_TEXT_ROWS}: the "
        f"official pipeline cuts the table at row {REFERENCE_TEXT_ROWS} and fails on any other value. Use the "
        f"config.json that came with these weights, or set max_text_seq_length to {REFERENCE_TEXT_ROWS}.")


LONG_VIDEO_REMEDY = "or use long-video mode (the sampler's long_video, the CLI's --long_video)"


def _too_many_frames(config: TransformerConfig, latent_frames: int, asked: str = "",
                     remedy: str = LONG_VIDEO_REMEDY) -> ValueError:
    return ValueError(
        f"{asked}{latent_frames} latent frames exceed the positional table of this model "
        f"({config.latent_frames} latent frames = {config.max_video_frames} video frames; quirk 2 of the "
        f"reference): ask for at most {config.max_video_frames} frames, {remedy}.")


def check_latent_frames_fit(config: TransformerConfig, latent_frames: int, long_video: bool = False,
                            asked: str = "", remedy: str = LONG_VIDEO_REMEDY) -> None:
    """positional_rows' refusal of a video longer than the table, up front. Long-video windows
    and rotary models (no table) take any length."""
    if long_video or config.use_rotary_positional_embeddings:
        return
    if latent_frames > config.latent_frames:
        raise _too_many_frames(config, latent_frames, asked, remedy)


def check_frames_fit(config: TransformerConfig, frames: int, long_video: bool = False,
                     remedy: str = LONG_VIDEO_REMEDY) -> None:
    """check_latent_frames_fit for a video of `frames` frames (before its VAE encode)."""
    latent = (frames - 1) // config.temporal_compression_ratio + 1
    check_latent_frames_fit(config, latent, long_video, f"{frames} frames = ", remedy)


def positional_rows(table: torch.Tensor, config: TransformerConfig, text_len: int,
                    frames: int, rows: int, cols: int) -> torch.Tensor:
    """The additive embedding for [text_len text tokens ; frames*rows*cols video tokens].

    `table` is the stored video table (sincos_table_3d, in the model's dtype).
    """
    if frames > config.latent_frames:
        raise _too_many_frames(config, frames)
    dim = table.shape[-1]
    stored = torch.cat([table.new_zeros(config.max_text_seq_length, dim), table], dim=0)
    if text_len > stored.shape[0]:
        raise ValueError(f"{text_len} text tokens exceed the positional table ({stored.shape[0]} rows): "
                         f"use at most {stored.shape[0]} tokens.")
    video = stored[REFERENCE_TEXT_ROWS:].view(
        1, config.latent_frames, config.sample_height // config.patch_size,
        config.sample_width // config.patch_size, dim)
    # Quirk 2: interpolated in space only; the time axis keeps the config's frame count.
    video = F.interpolate(video.permute(0, 4, 1, 2, 3), size=[config.latent_frames, rows, cols],
                          mode="trilinear", align_corners=False)
    video = video.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)
    return torch.cat([stored[None, :text_len], video], dim=1)[:, : text_len + frames * rows * cols]


def _crop_region_for_grid(grid_hw, base_width: int, base_height: int):
    height, width = grid_hw
    if height / width > base_height / base_width:
        resize_height, resize_width = base_height, int(round(base_height / height * width))
    else:
        resize_width, resize_height = base_width, int(round(base_width / width * height))
    top = int(round((base_height - resize_height) / 2.0))
    left = int(round((base_width - resize_width) / 2.0))
    return (top, left), (top + resize_height, left + resize_width)


def rotary_embeddings(config: TransformerConfig, frames: int, rows: int, cols: int, device=None):
    """3D RoPE (cos, sin) for the video tokens, CogVideoX 1.0 style.

    Quirk 6: the crop is computed against a 720x480 base with the VAE's 8x scale hard-coded.
    """
    base = 8 * config.patch_size
    crops = _crop_region_for_grid((rows, cols), 720 // base, 480 // base)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                       grid_size=(rows, cols), temporal_size=frames, use_real=True)
    return cos.to(device), sin.to(device)


def fps_tensor(fps: float) -> torch.Tensor:
    """Quirk 5: fps is a shape-[1] tensor broadcast over the CFG batch (int when integral)."""
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps {fps} must be a positive number (the reference samples use 4, 8, 16, 32).")
    return torch.tensor([int(fps)] if float(fps).is_integer() else [float(fps)])
