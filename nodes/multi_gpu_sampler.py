"""DropletVideoMultiGPUSampler: the DropletVideo Sampler's loop split across the GPUs ComfyUI sees,
one worker process per GPU (droplet_core/parallel/sample_job.py and sample_worker.py).

ComfyUI runs a prompt in one process and manages one copy of each model; the workers are
processes of their own that load the transformer file again, outside ComfyUI's memory management.
So ComfyUI unloads its models first, a MODEL with LoRAs or model patches is refused (the workers
would not have them), and the workers end with the sampler call.
"""

import tempfile

import comfy.model_management
import torch
import torch.distributed as dist

from ..droplet_core.parallel import DEFAULT_TIMEOUT_S, plan_layout
from ..droplet_core.parallel.sample_job import SampleJob, WorkerGroup, read_latents, write_job
from .model_patches import model_patches
from .latent_layout import preview_of
from .progress import comfy_on_step
from .sampler import DropletVideoSampler, comfy_latent, latent_scale, sampler_inputs, sampler_plan

PARALLEL_MODES = ("auto", "sequence", "cfg")
COLLECTIVE_TIMEOUT_S = DEFAULT_TIMEOUT_S  # a worker that hangs in a collective fails after this


def transformer_source(model):
    """The TransformerSource the loader recorded on this MODEL (the file each worker loads again);
    a MODEL with LoRAs or model patches is refused."""
    source = getattr(model.model, "droplet_source", None)
    if source is None:
        raise ValueError("this MODEL was not built by a DropletVideo loader (it does not say which transformer file it "
                         "holds): load it with DropletVideo Model Loader or Transformer Loader.")
    patches = ", ".join(patch.name for patch in model_patches(model))
    if patches:
        raise ValueError(f"multi-GPU sampling loads the transformer file in each worker; LoRAs and model patches are "
                         f"not carried over (this MODEL has {patches}): use the DropletVideo Sampler, or the command "
                         f"line under torchrun with --lora (README, Multi-GPU).")
    return source


def worker_device(model, gpus: int) -> str:
    """cuda (worker r on cuda:r) when ComfyUI samples on CUDA; cpu (gloo) when it samples on the CPU, where the
    node gives the same latents as on GPUs (to try a graph on a machine without GPUs), not faster."""
    kind = torch.device(model.load_device).type
    if kind == "cpu":
        return "cpu"
    if kind != "cuda":
        raise ValueError(f"multi-GPU sampling runs on CUDA GPUs (NCCL); ComfyUI samples on {kind}: use the "
                         f"DropletVideo Sampler.")
    count = torch.cuda.device_count()
    if gpus > count:
        fix = f"set gpus to {count} or less" if count >= 2 else "use the DropletVideo Sampler"
        raise ValueError(f"gpus {gpus} is more than the {count} CUDA device(s) ComfyUI sees (torch.cuda.device_count()"
                         f"): {fix}, or show ComfyUI more GPUs (CUDA_VISIBLE_DEVICES; --cuda-device shows it one).")
    if not dist.is_nccl_available():
        raise ValueError("multi-GPU sampling needs NCCL, which this PyTorch build lacks (NCCL is Linux-only): use the "
                         "DropletVideo Sampler.")
    return "cuda"


def multi_gpu_latent(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, scheduler: str,
                     use_dynamic_cfg: bool, strength: float, gpus: int, parallel: str) -> dict:
    """DropletVideoSampler's sample_latent (no long video, no step cache) on `gpus` worker processes."""
    base = model.model
    config = base.droplet_config
    source, device = transformer_source(model), worker_device(model, gpus)
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {parallel!r}: use one of {', '.join(PARALLEL_MODES)}.")
    plan_layout(parallel, gpus, config.num_attention_heads, cfg)  # refuses a split that cannot work, up front
    plan = sampler_plan(model, steps, cfg, seed, scheduler, use_dynamic_cfg, strength)
    scale = latent_scale("DropletVideo Sampler (multi-GPU)", base, positive, latent)
    inputs = sampler_inputs(base, positive, negative, latent, plan, torch.device("cpu"), scale)
    if plan.step_count() == 0:  # denoise 0: the input, unchanged (as the DropletVideo Sampler)
        return latent
    job = SampleJob(transformer_path=source.path, precision=source.precision, weight_format=source.weight_format,
                    attention=source.attention, plan=plan, latent_size=list(latent["samples"].shape[2:]),
                    parallel=parallel, device=device, timeout_s=COLLECTIVE_TIMEOUT_S)
    if device == "cuda":  # the workers' memory is outside ComfyUI's management: give them the GPUs
        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()
    on_step = comfy_on_step(plan.step_count())
    with tempfile.TemporaryDirectory(prefix="droplet_multi_gpu_") as folder:
        write_job(folder, job, inputs)
        workers = WorkerGroup(folder, gpus, device)
        workers.wait(lambda index, total: on_step(index, total, None),
                     comfy.model_management.throw_exception_if_processing_interrupted)
        latents = read_latents(folder)
    return comfy_latent(latents, scale, preview_of(latent))


class DropletVideoMultiGPUSampler:
    DESCRIPTION = ("The DropletVideo Sampler split across several GPUs, one worker process per GPU: the video tokens "
                   "(sequence parallel, Ulysses) and/or the [negative, positive] CFG halves are shared out, with the "
                   "one-GPU sampler's latents. Each worker loads the transformer file itself, outside ComfyUI's "
                   "memory management (ComfyUI unloads its models first); LoRAs and model patches are refused. No "
                   "long video or step cache. Linux with NCCL; on a CPU-only ComfyUI, CPU processes (gloo), not "
                   "faster.")
    CATEGORY = "DropletVideo"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = DropletVideoSampler.OUTPUT_TOOLTIPS
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        required = dict(DropletVideoSampler.INPUT_TYPES()["required"])
        required["model"] = ("MODEL", {"tooltip": "From a DropletVideo loader, with no LoRA or model patch in between "
                             "(each worker loads the transformer file the loader read, with its precision, weight "
                             "format and attention)."})
        return {"required": {
            **required,
            "gpus": ("INT", {"default": 2, "min": 2, "max": 64, "tooltip": "Worker processes, one per GPU (cuda:0 "
                     "up to gpus-1 of the GPUs ComfyUI sees). When ComfyUI runs on the CPU (--cpu) they are CPU "
                     "processes (gloo): the same latents, to try a graph without GPUs, but not faster than the "
                     "DropletVideo Sampler (the processes share the cores)."}),
            "parallel": (list(PARALLEL_MODES), {"default": "auto", "tooltip": "auto: the CFG halves on two groups "
                         "when cfg > 1 and gpus is even, the video tokens split over the rest. sequence: the tokens "
                         "over all gpus (gpus must divide the 48 attention heads). cfg: the two halves on 2 GPUs "
                         "(needs cfg > 1)."}),
        }}

    def sample(self, model, positive, negative, latent, steps, cfg, seed, scheduler, use_dynamic_cfg, denoise, gpus,
               parallel):
        return (multi_gpu_latent(model, positive, negative, latent, seed, steps, cfg, scheduler, use_dynamic_cfg,
                                 denoise, gpus, parallel),)
