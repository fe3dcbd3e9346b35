"""bench/gpu_check.py's engine stages (no ComfyUI): CUDA-vs-CPU on the tiny model, bf16 and fp8
speed and peak VRAM, sdpa vs SageAttention, block swap, and the 12 GiB cap. Also the helpers the
ComfyUI stages share: the call's inputs and the timing of steps."""

import gc
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

from droplet_core.attention import set_attention
from droplet_core.fp8 import quantize_blocks
from droplet_core.loading import load_transformer
from droplet_core.offload.block_swap import BlockSwap
from droplet_core.offload.plan import MARGIN_BYTES, Workload, component_bytes, transformer_activation_bytes
from droplet_core.tiny import ensure_tiny_checkpoint
from droplet_core.transformer import DropletVideoTransformer3DModel

GIB = 2**30


def call_inputs(config, run: dict, device, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """One CFG-batched transformer call at the run's latent grid: [B, F, C, H, W] noise and inpaint
    latents, text embeddings, timestep and fps (made on the CPU, so every device gets the same)."""
    g = torch.Generator().manual_seed(seed)
    b, f, h, w = run["batch"], run["frames"], run["height"], run["width"]
    noise = config.noise_channels
    tensors = dict(hidden_states=torch.randn(b, f, noise, h, w, generator=g),
                   inpaint_latents=torch.randn(b, f, config.in_channels - noise, h, w, generator=g),
                   encoder_hidden_states=torch.randn(b, run["text_tokens"], config.text_embed_dim, generator=g))
    inputs = {k: v.to(device, dtype) for k, v in tensors.items()}
    inputs.update(timestep=torch.full((b,), 500, device=device), fps=torch.full((b,), 8, device=device))
    return inputs


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_steps(step, run: dict, device) -> dict:
    """Seconds per call of `step` (after run['warm'] untimed calls) and the peak VRAM during them."""
    cuda = torch.device(device).type == "cuda"
    with torch.inference_mode():
        for _ in range(run["warm"]):
            step()
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(run["timed"]):
            out = step()
        sync(device)
        per_step = (time.perf_counter() - started) / run["timed"]
    row = {"s_per_step": round(per_step, 4), "finite": bool(torch.isfinite(out).all())}
    if cuda:
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    return row


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def capped(run: dict, device):
    """A context that caps this process's CUDA allocations at run['cap_gib'] (nothing on the CPU)."""
    class Cap:
        def __enter__(self):
            if torch.device(device).type == "cuda":
                total = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, run["cap_gib"] * GIB / total))

        def __exit__(self, *exc):
            if torch.device(device).type == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0)
    return Cap()


def random_transformer(config, device, dtype=torch.bfloat16):
    """The transformer with its own random init, built on `device` (a 5B model's init on the CPU
    would take minutes)."""
    with torch.device(device):
        model = DropletVideoTransformer3DModel(config)
    model.init_buffers(device=device, dtype=dtype)
    return model.to(dtype).eval().requires_grad_(False)


def stage_cuda_vs_cpu(report, name, ctx) -> None:
    """The tiny checkpoint's transformer, one fp32 forward on the CPU and (where there is one) on CUDA."""
    folder = Path(os.environ.get("DROPLET_TINY_DIR") or Path(tempfile.gettempdir()) / "droplet_gpu_check_tiny")
    model = load_transformer(ensure_tiny_checkpoint(folder) / "transformer", torch.float32)
    run = dict(batch=2, frames=2, height=8, width=8, text_tokens=8)
    with torch.inference_mode():
        cpu = model(**call_inputs(model.config, run, "cpu", torch.float32))
        report.set(name, "cpu_output_norm", round(float(cpu.norm()), 4))
        if not torch.cuda.is_available():
            report.set(name, "cuda", "skipped: no CUDA")
            return
        model.cuda().init_buffers(device="cuda", dtype=torch.float32)
        cuda = model(**call_inputs(model.config, run, "cuda", torch.float32)).cpu()
    error = float((cuda - cpu).norm() / cpu.norm())
    report.set(name, "relative_error", error)
    report.set(name, "max_abs_diff", float((cuda - cpu).abs().max()))
    # TF32 is off by default in torch; 1e-4 leaves room for kernel order, not for a wrong op.
    report.set(name, "equal_within_1e-4", error < 1e-4)


def stage_engine(report, name, ctx) -> None:
    """bf16 and the pack's fp8 blocks, fully on the device."""
    device, run = ctx["device"], ctx["run"]
    model = random_transformer(run["config"], device)
    inputs = call_inputs(model.config, run, device)
    report.set(name, "bf16", timed_steps(lambda: model(**inputs), run, device))
    layers = quantize_blocks(model)
    free_memory()
    report.set(name, "fp8_e4m3fn", {**timed_steps(lambda: model(**inputs), run, device), "note": f"{layers} Linears"})
    del model
    free_memory()


def stage_attention(report, name, ctx) -> None:
    """sdpa against SageAttention, bf16."""
    device, run = ctx["device"], ctx["run"]
    if importlib.util.find_spec("sageattention") is None:
        report.set(name, "sage", "absent: no sageattention wheel in this environment")
    model = random_transformer(run["config"], device)
    inputs = call_inputs(model.config, run, device)
    set_attention(model, "sdpa")
    with torch.inference_mode():
        reference = model(**inputs).float()
    report.set(name, "sdpa", timed_steps(lambda: model(**inputs), run, device))
    if importlib.util.find_spec("sageattention") is not None:
        if torch.device(device).type != "cuda":
            report.set(name, "sage", "skipped: no CUDA")
        else:
            set_attention(model, "sage")
            with torch.inference_mode():
                error = float((model(**inputs).float() - reference).norm() / reference.norm())
            report.set(name, "sage", {**timed_steps(lambda: model(**inputs), run, device),
                                      "note": f"relative error vs sdpa {error:.4f}"})
    del model
    free_memory()


def swapped_steps(model, blocks_on_device: int, run: dict, device) -> dict:
    """timed_steps with all but the first `blocks_on_device` blocks streamed from (pinned) CPU memory."""
    model.to("cpu")
    free_memory()
    swap = BlockSwap(model, device, blocks_on_device)
    inputs = call_inputs(model.config, run, device)
    with swap.on_device():
        runner = swap.wrap()
        row = timed_steps(lambda: model(**inputs, block_runner=runner), run, device)
    return {**row, "note": f"{blocks_on_device} of {len(model.transformer_blocks)} blocks resident, "
                           f"{swap.fetches} block copies"}


def stage_block_swap(report, name, ctx) -> None:
    device, run = ctx["device"], ctx["run"]
    model = random_transformer(run["config"], device)
    blocks = len(model.transformer_blocks) // 2
    report.set(name, f"bf16_{blocks}_resident", swapped_steps(model, blocks, run, device))
    del model
    free_memory()


def planned_blocks(model, run: dict) -> int:
    """Blocks the offload planner's block-swap arithmetic keeps resident under the cap (transformer only)."""
    sizes = component_bytes(model)
    work = Workload(width=run["width"] * 8, height=run["height"] * 8, frames=(run["frames"] - 1) * 4 + 1,
                    text_tokens=run["text_tokens"], batch=run["batch"])
    fixed = sizes.transformer_other + 2 * sizes.block + transformer_activation_bytes(model.config, work)
    budget = int(run["cap_gib"] * GIB) - MARGIN_BYTES
    return max(0, min(sizes.num_blocks, (budget - fixed) // sizes.block))


def stage_engine_capped(report, name, ctx) -> None:
    """bf16 and fp8 under the cap: block swap with the resident blocks the planner's arithmetic allows."""
    device, run = ctx["device"], ctx["run"]
    for setting in ("bf16", "fp8_e4m3fn"):
        model = random_transformer(run["config"], device)
        if setting != "bf16":
            quantize_blocks(model)
        blocks = planned_blocks(model, run)
        with capped(run, device):
            try:
                row = swapped_steps(model, blocks, run, device)
            except torch.OutOfMemoryError as error:
                row = {"error": f"out of memory under {run['cap_gib']} GiB: {str(error)[:120]}"}
        report.set(name, setting, row)
        del model
        free_memory()


ENGINE_STAGES = {"cuda_vs_cpu": stage_cuda_vs_cpu, "engine": stage_engine, "attention": stage_attention,
                 "block_swap": stage_block_swap, "engine_capped": stage_engine_capped}
