"""The tiled VAE decode shared out across the ranks, with the one-process result bit for bit.

diffusers' `AutoencoderKLCogVideoX.tiled_decode` decodes overlapping latent tiles one after the
other, each through its own frame batches and causal-conv cache, and only then blends every tile
into its upper and left neighbours and crops. The tiles are independent until that blend, so each
rank decodes every world_size-th tile, rank 0 gathers them all and blends and crops them with
diffusers' own `blend_v` / `blend_h` and tile geometry. Only the distribution is ours.

The untiled decode (the reference's default) is not split: its frame batches hand their
causal-conv caches on from batch to batch, so rank 0 decodes alone (`ParallelRun.decode`).
"""

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from ..axes import channels_first
from ..vae_memory import decode_latents
from ..vae_ops import decode_to_frames, set_tiling


def tile_grid(vae, height: int, width: int) -> List[List[Tuple[int, int]]]:
    """The latent (row, column) where each tile starts, in rows, as tiled_decode visits them."""
    overlap_height = int(vae.tile_latent_min_height * (1 - vae.tile_overlap_factor_height))
    overlap_width = int(vae.tile_latent_min_width * (1 - vae.tile_overlap_factor_width))
    return [[(i, j) for j in range(0, width, overlap_width)] for i in range(0, height, overlap_height)]


def rank_share(tiles: int, world_size: int, rank: int) -> range:
    """The tile indices (row-major) this rank decodes: every world_size-th, so the smaller edge
    tiles spread over the ranks too."""
    return range(rank, tiles, world_size)


def decode_tile(vae, z: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """One tile through diffusers' per-tile frame batches (the same loop as `_decode`)."""
    return decode_latents(vae, z[:, :, :, i:i + vae.tile_latent_min_height, j:j + vae.tile_latent_min_width])


def gather_tiles(mine: List[torch.Tensor], count: int, rank: int, world_size: int,
                 like: torch.Tensor) -> Optional[List[torch.Tensor]]:
    """Every rank's decoded tiles on rank 0 in tile order (None on the others). gather takes one
    shape from every rank: the tile shapes are exchanged first, then each rank sends one slot per
    tile it could hold, padded to the largest tile. `like` gives the dtype and device."""
    slots = -(-count // world_size)
    shapes = torch.zeros(slots, like.ndim, dtype=torch.int64, device=like.device)
    for slot, tile in enumerate(mine):
        shapes[slot] = torch.tensor(tile.shape)
    all_shapes = [torch.empty_like(shapes) for _ in range(world_size)]
    dist.all_gather(all_shapes, shapes)
    largest = torch.stack(all_shapes).flatten(0, 1).amax(0).tolist()
    sent = torch.zeros(slots, *largest, dtype=like.dtype, device=like.device)
    for slot, tile in enumerate(mine):
        sent[(slot, *(slice(size) for size in tile.shape))] = tile
    received = [torch.empty_like(sent) for _ in range(world_size)] if rank == 0 else None
    dist.gather(sent, received, dst=0)
    if rank != 0:
        return None
    tiles = []
    for index in range(count):
        source, slot = index % world_size, index // world_size  # the inverse of rank_share
        tiles.append(received[source][(slot, *(slice(size) for size in all_shapes[source][slot].tolist()))])
    return tiles


def blend_tiles(vae, rows: List[List[torch.Tensor]]) -> torch.Tensor:
    """tiled_decode after its decode loop: each tile blended into its upper and left neighbours (in
    place, as diffusers does, so a left neighbour is already blended with its own upper one), cropped,
    concatenated."""
    blend_extent_height = int(vae.tile_sample_min_height * vae.tile_overlap_factor_height)
    blend_extent_width = int(vae.tile_sample_min_width * vae.tile_overlap_factor_width)
    row_limit_height = vae.tile_sample_min_height - blend_extent_height
    row_limit_width = vae.tile_sample_min_width - blend_extent_width
    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, blend_extent_height)
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, blend_extent_width)
            result_row.append(tile[:, :, :, :row_limit_height, :row_limit_width])
        result_rows.append(torch.cat(result_row, dim=4))
    return torch.cat(result_rows, dim=3)


@torch.no_grad()
def split_tiled_decode(vae, z: torch.Tensor, rank: int, world_size: int) -> Optional[torch.Tensor]:
    """vae.tiled_decode(z).sample on rank 0, None on the others; every rank must call it."""
    grid = tile_grid(vae, z.shape[3], z.shape[4])
    origins = [origin for row in grid for origin in row]
    mine = [decode_tile(vae, z, *origins[index]) for index in rank_share(len(origins), world_size, rank)]
    tiles = gather_tiles(mine, len(origins), rank, world_size, z)
    if tiles is None:
        return None
    columns = len(grid[0])
    return blend_tiles(vae, [tiles[start:start + columns] for start in range(0, len(tiles), columns)])


@torch.no_grad()
def decode_to_frames_across_ranks(vae, latents: torch.Tensor, rank: int, world_size: int) -> Optional[torch.Tensor]:
    """vae_ops.decode_to_frames(vae, latents, tiled=True) on rank 0 (None on the others), the tiles
    shared out; every rank must call it."""
    parameter = next(vae.parameters())
    set_tiling(vae, True)
    # decode_to_frames' scaling, in its order of operations, so the tiles get the same numbers.
    z = (1 / vae.config.scaling_factor * channels_first(latents)).to(parameter.device, parameter.dtype)
    if not (z.shape[4] > vae.tile_latent_min_width or z.shape[3] > vae.tile_latent_min_height):
        return decode_to_frames(vae, latents, tiled=True) if rank == 0 else None  # one tile: diffusers decodes whole
    frames = split_tiled_decode(vae, z, rank, world_size)
    return None if frames is None else (frames / 2 + 0.5).clamp(0, 1).float()
