"""Several processes on one video (droplet_core/parallel/): the same latents as one process.

CPU ranks on gloo, started by parallel_workers.run_ranks, fp32, the tiny checkpoint at 64x64,
5 frames, 2 steps, image-to-video with CFG 6. gloo has all_to_all_single on CPU (torch 2.13), so
diffusers' Ulysses all-to-all runs as it would on NCCL: nothing is emulated. Two-rank jobs share
one start (sequence, CFG, a rotary forward, a tiled decode, then the fault job that kills rank 1),
the four-rank jobs (CFG x sequence, tiled decodes) another; each start has a hard deadline, so no
test can hang.

Tolerance: the parallel runs do the same arithmetic in another order (GEMMs over half the rows
or half the batch, keys in rank-major order), a few fp32 ulps per forward that CFG 6 multiplies
by ~11; the latents are ~9 in magnitude, so they are compared at 1e-5 of their scale. The tiled
decode shared out across ranks does each tile's arithmetic exactly as one process: bit for bit.
"""

import signal

import pytest
import torch

from droplet_core.cli import main
from droplet_core.loading import load_transformer, load_vae
from droplet_core.parallel import ParallelLayout, plan_layout
from droplet_core.parallel.vae_decode import rank_share, tile_grid
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.vae_ops import decode_to_frames, set_tiling
from engine_fixtures import GOLDENS, tiny_ckpt  # noqa: F401
from droplet_core.video_io import load_image
from parallel_workers import TIMEOUT_S, random_latents, run_ranks, transformer_inputs

ROTARY = {"use_rotary_positional_embeddings": True, "sample_width": 8, "sample_height": 8, "sample_frames": 5}
DEADLINE_S = 300  # all ranks, start-up included: far above their time on an idle 2-core machine
REQUEST = {"prompt": "a panda plays a guitar", "image": str(GOLDENS / "start.png"), "width": 64, "height": 64,
           "frames": 5, "steps": 2, "guidance_scale": 6.0, "max_sequence_length": 226}
# 128x128 px = 16x16 latents: 3x3 of the tiny VAE's 8-latent tiles (steps 7 and 6 once align_tiles has
# set the overlaps); 13 frames = 4 latent frames, two frame batches per tile.
TILED = {"width": 128, "height": 128, "frames": 13, "tiled_vae": True}
# [B, F_lat, C, h, w]: 9 tiles over 4 ranks (3, 2, 2, 2), and 3 tiles over 4 ranks (one rank idle).
DECODE_SHAPES = [[1, 4, 16, 16, 16], [1, 2, 16, 16, 6]]


def close_to(parallel: torch.Tensor, single: torch.Tensor) -> None:
    error = (parallel - single).abs().max().item()
    assert error <= 1e-5 * max(1.0, single.abs().max().item()), f"max |parallel - single| = {error:.3g}"


@pytest.fixture(scope="module")
def single(tiny_ckpt):  # noqa: F811
    request = Request(**{**REQUEST, "image": load_image(REQUEST["image"])})
    return load_pipeline(tiny_ckpt).generate(request).latents


@pytest.fixture(scope="module")
def two_ranks(tiny_ckpt, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("two_ranks")
    jobs = [{"name": "sequence", "mode": "sequence"}, {"name": "cfg", "mode": "cfg"},
            {"name": "rotary", "transformer_only": True, "overrides": ROTARY},
            {"name": "tiled", "mode": "sequence", "request": TILED, "keep_frames": True},
            {"name": "fault", "mode": "sequence", "kill_rank": 1, "kill_step": 0}]
    codes = run_ranks(2, tiny_ckpt, REQUEST, jobs, out, DEADLINE_S)
    return codes, [torch.load(out / f"rank{r}.pt") for r in range(2)], out


def test_sequence_parallel_on_two_processes_equals_one_process(two_ranks, single):
    _, results, _ = two_ranks
    for rank in (0, 1):
        close_to(results[rank]["sequence"], single)


def test_cfg_parallel_on_two_processes_equals_one_process(two_ranks, single):
    _, results, _ = two_ranks
    for rank in (0, 1):
        close_to(results[rank]["cfg"], single)


def test_sequence_parallel_rotary_forward_equals_one_process(two_ranks, tiny_ckpt):  # noqa: F811
    """The release uses sin-cos positions; the RoPE rows must be split like the tokens (227 text tokens: uneven)."""
    model = load_transformer(tiny_ckpt / "transformer", config_overrides=ROTARY)
    inputs = transformer_inputs(model)
    with torch.no_grad():
        expected = model(*inputs[:5], image_rotary_emb=inputs[5])
    _, results, _ = two_ranks
    close_to(results[0]["rotary"], expected)


def test_a_killed_rank_ends_the_other_with_a_clear_error(two_ranks):
    codes, results, out = two_ranks
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 0, "rank 0 must end by itself, with the error handled"
    fault = results[0]["fault"]
    assert "rank 0 of 2" in fault["error"] and "was killed" in fault["error"]
    assert fault["at"] - float((out / "killed_at").read_text()) < TIMEOUT_S + 10


@pytest.fixture(scope="module")
def four_ranks(tiny_ckpt, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("four_ranks")
    jobs = [{"name": "auto", "mode": "auto"}, {"name": "decode", "mode": "auto", "decode_shapes": DECODE_SHAPES}]
    codes = run_ranks(4, tiny_ckpt, REQUEST, jobs, out, DEADLINE_S)
    assert codes == [0, 0, 0, 0]
    return [torch.load(out / f"rank{r}.pt") for r in range(4)]


def test_cfg_and_sequence_parallel_on_four_processes_equals_one_process(four_ranks, single):
    for rank in range(4):
        close_to(four_ranks[rank]["auto"], single)


def tile_count(vae, latents: torch.Tensor) -> int:
    set_tiling(vae, True)
    return sum(len(row) for row in tile_grid(vae, latents.shape[3], latents.shape[4]))


def one_thread_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """The one-process tiled decode on one thread, as each rank runs: the same thread count leaves
    no room for a busy machine's thread-count changes in the reductions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return decode_to_frames(vae, latents, tiled=True)
    finally:
        torch.set_num_threads(threads)


def test_tiled_decode_shared_by_two_processes_equals_one_process(two_ranks, tiny_ckpt):  # noqa: F811
    """Through the pipeline: each rank decodes half the tiles, rank 0 blends them into the frames one
    process decodes from the same latents, bit for bit; rank 1 keeps no video."""
    _, results, _ = two_ranks
    assert isinstance(results[0]["tiled"], tuple), results[0]["tiled"]  # else the job's error
    latents, frames = results[0]["tiled"]
    vae = load_vae(tiny_ckpt / "vae")
    assert tile_count(vae, latents) >= 2 * 2
    assert torch.equal(frames, one_thread_decode(vae, latents)[0].permute(1, 2, 3, 0))
    assert results[1]["tiled"][1].numel() == 0


def test_tiled_decode_shared_by_four_processes_equals_one_process(four_ranks, tiny_ckpt):  # noqa: F811
    """Uneven shares, and more ranks than tiles."""
    vae = load_vae(tiny_ckpt / "vae")
    for index, shape in enumerate(DECODE_SHAPES):
        latents = random_latents(shape)
        assert torch.equal(four_ranks[0]["decode"][index], one_thread_decode(vae, latents))
        assert all(four_ranks[rank]["decode"][index] is None for rank in (1, 2, 3))
    assert [tile_count(vae, random_latents(shape)) for shape in DECODE_SHAPES] == [9, 3]


def test_every_tile_is_decoded_by_exactly_one_rank():
    for tiles in range(1, 20):
        for world_size in range(1, 9):
            shares = [list(rank_share(tiles, world_size, rank)) for rank in range(world_size)]
            assert sorted(sum(shares, [])) == list(range(tiles)), (tiles, world_size)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1, (tiles, world_size)


def test_layouts():
    assert plan_layout("auto", 4, 48, 6.0) == ParallelLayout(cfg=2, sequence=2)
    assert plan_layout("auto", 2, 48, 6.0) == ParallelLayout(cfg=2, sequence=1)
    assert plan_layout("auto", 4, 48, 1.0) == ParallelLayout(cfg=1, sequence=4)
    assert plan_layout("auto", 3, 48, 6.0) == ParallelLayout(cfg=1, sequence=3)
    assert plan_layout("sequence", 8, 48, 6.0) == ParallelLayout(cfg=1, sequence=8)
    assert plan_layout("none", 8, 48, 6.0) == ParallelLayout()
    with pytest.raises(ValueError, match="needs guidance_scale > 1"):
        plan_layout("cfg", 2, 48, 1.0)


def test_a_degree_that_does_not_divide_the_heads_is_refused():
    with pytest.raises(ValueError, match="degree 5 does not divide the model's 48 attention heads .* valid degrees "
                                         "are 1, 2, 3, 4, 6, 8, 12, 16, 24, 48;"):
        plan_layout("sequence", 5, 48, 6.0)
    with pytest.raises(ValueError, match="degree 5 does not divide"):
        plan_layout("auto", 10, 48, 6.0)  # CFG x2, sequence x5


def test_cli_refuses_the_degree_before_loading(tiny_ckpt, monkeypatch, capsys):  # noqa: F811
    """torchrun --nproc_per_node 3 on the tiny model (2 heads): refused with the valid degrees, no group joined."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main(["--ckpt", str(tiny_ckpt), "--parallel", "sequence", "--out", "unused.mp4"]) == 2
    assert "valid degrees are 1, 2;" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()
