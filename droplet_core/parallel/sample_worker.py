"""One rank of a sampler call split across processes (sample_job.WorkerGroup starts them):

    python -m droplet_core.parallel.sample_worker <job folder>    # with RANK, WORLD_SIZE, MASTER_ADDR/PORT

Each rank loads the transformer file as the loader did (precision, weight format, attention), joins
the group and splits the work as the CLI does (ParallelRun: the sequence split on the transformer,
the CFG split around it), then calls sample_plan.sample with the node's plan and inputs; so the
latents are the single-device ones up to float summation order. Rank 0 prints one progress line
per step and writes the latents.
Exit status: 0; 2 for a refused setting (ValueError, FileNotFoundError); STOPPED_BY_PEER when the
run stopped because another rank failed (ParallelRunError); 1 for this rank's own error (a shape
error, CUDA out of memory: run.py's guard lets it through), with the traceback.
"""

import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from ..engine_options import EngineOptions, prepare_transformer
from ..loading import load_transformer
from ..pipeline import DTYPES
from ..sample_plan import sample
from .process_group import end_process
from .run import ParallelRunError, start_parallel
from .sample_job import LATENTS, PROGRESS, STOPPED_BY_PEER, SampleJob, read_job


def load(job: SampleJob, dtype: torch.dtype):
    options = EngineOptions(weights=job.weight_format, attention=job.attention).check()
    transformer = load_transformer(job.transformer_path, dtype, keep_fp8=options.keep_fp8)
    prepare_transformer(transformer, options, dtype)
    return transformer


def report_step(index: int, total: int, latents) -> None:
    print(f"{PROGRESS} {index + 1} {total}", flush=True)


def main(folder) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = Path(folder)
    run = None
    try:
        job, inputs = read_job(folder)
        dtype = DTYPES[job.precision]
        transformer = load(job, dtype)
        run = start_parallel(job.parallel, job.device, transformer.config.num_attention_heads,
                             job.plan.guidance_scale, job.timeout_s)
        if run is None:
            raise ValueError(f"parallel {job.parallel!r} on {os.environ.get('WORLD_SIZE', 1)} processes leaves rank "
                             f"0 alone: use auto, sequence or cfg on 2 or more.")
        transformer.to(run.device)
        run.attach(SimpleNamespace(transformer=transformer))  # the sequence split, as on the pipeline's transformer
        with run.guard():
            latents = sample(transformer, job.plan, inputs, job.latent_size, run.device, dtype,
                             on_step=report_step if run.keeps_video else None,
                             wrap_model=lambda model: run.wrap(model, job.plan))
        if run.keeps_video:
            save_file({"latents": latents.float().cpu().contiguous()}, str(folder / "latents.part"))
            os.replace(folder / "latents.part", folder / LATENTS)  # complete, or absent
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ParallelRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return STOPPED_BY_PEER
    finally:
        if run is not None:
            run.close()
    return 0


if __name__ == "__main__":
    end_process(lambda: main(sys.argv[1]))
