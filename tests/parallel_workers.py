"""Worker processes for tests/test_engine_parallel.py: several CPU ranks (gloo) on one generation.

`run_ranks` starts `world` plain processes (`python parallel_workers.py`, with the environment
torchrun would give them, but no torchrun agent: the test sees how the ranks themselves end) that
each run the same list of jobs and save what they got (latents, or the error text and when it
came) to out_dir/rank<N>.pt. A job can kill one rank at a given step (SIGKILL from its step
callback), the way a crashed or OOM-killed GPU process disappears. Every wait has a deadline,
so a hung rank fails the test instead of hanging CI.

Job keys: name, mode (the --parallel mode); request (Request fields over the shared ones);
keep_frames (save (latents, frames) instead of latents); kill_rank, kill_step; transformer_only
+ overrides (one transformer forward); decode_shapes (only the tiled decode, of random_latents).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from droplet_core.loading import load_transformer, load_vae  # noqa: E402
from droplet_core.parallel import ParallelRunError, checkpoint_heads, start_parallel  # noqa: E402
from droplet_core.pipeline import Request, load_pipeline  # noqa: E402
from droplet_core.video_io import load_image  # noqa: E402

TIMEOUT_S = 20.0  # per collective, on the process groups (a dead peer is seen sooner: its sockets close)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, ckpt: Path, request: dict, jobs: list, out_dir: Path, deadline_s: float) -> list:
    """Exit codes of the ranks (None for a rank still running at the deadline: it is then killed).
    `request`: Request fields, with `image` a path."""
    port = free_port()
    spec = json.dumps({"ckpt": str(ckpt), "request": request, "jobs": jobs, "out_dir": str(out_dir)})
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        log = open(Path(out_dir) / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, __file__, spec], env=env, stdout=log, stderr=subprocess.STDOUT))
    end = time.monotonic() + deadline_s
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return codes


def _rank_main(spec: dict):
    torch.set_num_threads(1)
    rank, out_dir = int(os.environ["RANK"]), Path(spec["out_dir"])
    fields = dict(spec["request"])
    request = Request(**{**fields, "image": load_image(fields["image"])})
    results = {}
    for job in spec["jobs"]:
        results[job["name"]] = _run_job(rank, spec["ckpt"], request, job, out_dir)
        torch.save(results, out_dir / f"rank{rank}.pt")
    if torch.distributed.is_initialized() and not any(isinstance(r, dict) for r in results.values()):
        torch.distributed.destroy_process_group()  # (after a peer died the group is left to the process exit)


def _run_job(rank, ckpt, request, job, out_dir):
    if job.get("transformer_only"):
        return _transformer_job(ckpt, job)
    if job.get("decode_shapes"):
        return _decode_job(ckpt, request, job)
    request = replace(request, **job.get("request", {}))
    pipe = load_pipeline(ckpt)
    run = start_parallel(job["mode"], "cpu", pipe.transformer.config.num_attention_heads, request.guidance_scale,
                         TIMEOUT_S)
    run.attach(pipe)

    def on_step(i, total, latents):
        if rank == job.get("kill_rank") and i == job.get("kill_step"):
            (out_dir / "killed_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        with run.guard():
            result = pipe.generate(request, on_step=on_step)
            return (result.latents, result.frames) if job.get("keep_frames") else result.latents
    except ParallelRunError as error:
        return {"error": str(error), "at": time.time()}


def _transformer_job(ckpt, job):
    """One forward of a transformer with job["overrides"] (e.g. rotary), split by sequence."""
    model = load_transformer(Path(ckpt) / "transformer", config_overrides=job["overrides"])
    run = start_parallel("sequence", "cpu", model.config.num_attention_heads, 1.0, TIMEOUT_S)
    from droplet_core.parallel.sequence import enable_sequence_parallel
    enable_sequence_parallel(model, run.mesh, run.device)
    inputs = transformer_inputs(model)
    with torch.no_grad():
        return model(*inputs[:4], inputs[4], image_rotary_emb=inputs[5])


def _decode_job(ckpt, request, job):
    """The tiled decode alone across the ranks, of random_latents(shape) for each of job["decode_shapes"]:
    the frames on rank 0, None on the others."""
    vae = load_vae(Path(ckpt) / "vae")
    run = start_parallel(job["mode"], "cpu", checkpoint_heads(ckpt), request.guidance_scale, TIMEOUT_S)
    return [run.decode(vae, random_latents(shape), tiled=True) for shape in job["decode_shapes"]]


def random_latents(shape):
    """Seeded [B, F_lat, 16, h, w] latents of about the sampler's scale."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def transformer_inputs(model):
    """(latents, text, timestep, fps, inpaint, rope) for a 2-video batch with 227 text tokens (odd: uneven shares)."""
    c = model.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 2, 16, 8, 8, generator=generator)
    inpaint = torch.randn(2, 2, 17, 8, 8, generator=generator)
    text = torch.randn(2, 227, c.text_embed_dim, generator=generator)
    return latents, text, torch.tensor([999, 500]), torch.tensor([8]), inpaint, model.rotary(2, 8, 8)


if __name__ == "__main__":
    _rank_main(json.loads(sys.argv[1]))
