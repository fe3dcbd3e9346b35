"""Peak GPU memory of the release model's parts at its defaults, traced on a machine without a GPU.

Each part is built with fake tensors (torch's FakeTensorMode: shapes and dtypes, no data) and
run once while `LiveBytes` adds up the bytes of the tensor storages alive after every op:
- the transformer, one CFG-batched forward at 672x384x85 (22 latent frames, 400 text tokens),
  bf16, and with fp8 block weights;
- the VAE decode of those latents (this repo's lean path, and diffusers' tiling) and the
  conditioning encode of the 85-frame masked video (plain and tiled);
- T5-XXL encoding 400 tokens.
Fake CPU tensors stand in for the GPU's (a CPU-only torch cannot index fake CUDA tensors; the
sizes of what lives are the same), and attention runs as the flash kernel a GPU picks for bf16:
under fake tensors SDPA might otherwise fall back to the math path with its tokens^2 matrix.
Not seen: a kernel's own scratch space, the CUDA context (~0.5 GB), cuBLAS workspaces and the
caching allocator's fragmentation; the table adds the offload planner's 1.5 GiB margin for them.
`--calibrate` runs the transformer (2 blocks) and the VAE decode for real on the CPU at a small
size in fp32 and prints measured / traced (peak RSS growth against the traced activations).

    python bench/vram_trace.py [--width 672 --height 384 --frames 85 --text-tokens 400] [--calibrate]
"""

import argparse
import contextlib
import subprocess
import sys
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from droplet_core import shapes  # noqa: E402
from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, TransformerConfig, VaeConfig  # noqa: E402
from droplet_core.fp8 import quantize_blocks, quantize_t5  # noqa: E402
from droplet_core.offload.plan import MARGIN_BYTES, component_bytes, module_bytes  # noqa: E402
from droplet_core.transformer import DropletVideoTransformer3DModel  # noqa: E402
from droplet_core.vae_memory import decode_latents, encode_moments, trim_vae_memory  # noqa: E402
from droplet_core.vae_ops import set_tiling  # noqa: E402

GIB = 2**30
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive, counted when an op makes one and when Python frees it."""

    def __init__(self, tensors):
        super().__init__()
        self.live = self.peak = 0
        self.seen = weakref.WeakSet()
        for tensor in tensors:
            self.add(tensor)

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self.seen:
            return
        self.seen.add(storage)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self.free, size)

    def free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, _types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.add(leaf)
        return out


@contextlib.contextmanager
def flash_attention():
    """Unmasked attention (the transformer's) as the flash kernel; masked (T5's position bias)
    as PyTorch picks it: at 400 tokens its scores are a few MB."""
    original = F.scaled_dot_product_attention

    def flash_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None:
            return original(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                  scale=scale)[0]

    F.scaled_dot_product_attention = flash_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def activation_peak(module, run, inputs) -> int:
    """Peak bytes alive while `run()` executes, beyond the module's weights and the inputs."""
    tracker = LiveBytes([*module.parameters(), *module.buffers(), *inputs])
    resident = tracker.live
    with torch.no_grad(), flash_attention(), tracker:
        run()
    return tracker.peak - resident


def fake_module(build, dtype):
    """The module built on the meta device, then given empty fake tensors."""
    with unset_fake_temporarily(), torch.device("meta"):
        module = build().to(dtype)
    return module.to_empty(device="cpu").eval().requires_grad_(False)


def latent_grid(width: int, height: int, frames: int):
    return shapes.latent_frames(frames), height // 8, width // 8


def transformer_inputs(config, width, height, frames, text_tokens, dtype):
    latent_frames, rows, cols = latent_grid(width, height, frames)
    return dict(hidden_states=torch.randn(2, latent_frames, 16, rows, cols, dtype=dtype),
                encoder_hidden_states=torch.randn(2, text_tokens, config.text_embed_dim, dtype=dtype),
                timestep=torch.full((2,), 999), fps=torch.full((1,), 8),
                inpaint_latents=torch.randn(2, latent_frames, 17, rows, cols, dtype=dtype))


def trace_transformer(width=672, height=384, frames=85, text_tokens=400, fp8=False,
                      config: TransformerConfig = COGVIDEOX_5B_CLASS_TRANSFORMER, dtype=torch.bfloat16) -> dict:
    """{"weights", "activations"} bytes of one CFG-batched forward, plus the block sizes."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = fake_module(lambda: DropletVideoTransformer3DModel(config), dtype)
        model.init_buffers("cpu", dtype)
        if fp8:
            quantize_blocks(model)
        inputs = transformer_inputs(config, width, height, frames, text_tokens, dtype)
        rotary = model.rotary(*latent_grid(width, height, frames), "cpu")  # None on the release's sin-cos path
        activations = activation_peak(model, lambda: model(**inputs, image_rotary_emb=rotary), inputs.values())
        sizes = component_bytes(model)
    return {"weights": sizes.transformer, "activations": activations, "block": sizes.block,
            "blocks": sizes.num_blocks, "other": sizes.transformer_other, "largest_layer": sizes.largest_layer}


def trace_vae(width=672, height=384, frames=85, dtype=torch.bfloat16, parts=("decode", "encode")) -> dict:
    """Activation bytes of the decode and the conditioning encode, plain and tiled, and the weights."""
    from diffusers import AutoencoderKLCogVideoX

    with FakeTensorMode(allow_non_fake_inputs=True):
        vae = fake_module(lambda: AutoencoderKLCogVideoX(**VaeConfig().diffusers_kwargs()), dtype)
        trim_vae_memory(vae)
        latents = torch.randn(1, 16, *latent_grid(width, height, frames), dtype=dtype)
        video = torch.randn(1, 3, frames, height, width, dtype=dtype)
        peaks = {"weights": module_bytes(vae)}
        for tiled in (False, True):
            suffix = "_tiled" if tiled else ""
            set_tiling(vae, tiled)
            decode = (lambda: vae.decode(latents).sample) if tiled else (lambda: decode_latents(vae, latents))
            encode = (lambda: vae.encode(video)[0].mode()) if tiled else (lambda: encode_moments(vae, video))
            if "decode" in parts:
                peaks["decode" + suffix] = activation_peak(vae, decode, [latents])
            if "encode" in parts:
                peaks["encode" + suffix] = activation_peak(vae, encode, [video])
    return peaks


def trace_t5(text_tokens=400, dtype=torch.bfloat16) -> dict:
    from transformers import T5Config, T5EncoderModel

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = fake_module(lambda: T5EncoderModel(T5Config(**T5_XXL)), dtype)
        ids = torch.zeros(1, text_tokens, dtype=torch.long)
        trace = {"weights": module_bytes(model), "activations": activation_peak(model, lambda: model(ids), [ids])}
        quantize_t5(model)
        return {**trace, "fp8_weights": module_bytes(model)}


def gib(value) -> str:
    return f"{value / GIB:.1f} GiB"


def mode_table(tr, tr_fp8, vae, t5) -> list:
    """(mode, peak) per offload mode, composed from the traced parts, plus the planner's margin."""
    transformer = tr["weights"] + tr["activations"]
    vae_plain = vae["weights"] + max(vae["decode"], vae["encode"])
    vae_tiled = vae["weights"] + max(vae["decode_tiled"], vae["encode_tiled"])
    text = t5["weights"] + t5["activations"]
    rows = [
        ("none: everything on the GPU", tr["weights"] + t5["weights"] + vae["weights"] +
         max(tr["activations"], t5["activations"], vae_plain - vae["weights"])),
        ("model (ComfyUI's default): one part at a time", max(transformer, text, vae_plain)),
        ("model, fp8 blocks, VAE tiling", max(tr_fp8["weights"] + tr_fp8["activations"], text, vae_tiled)),
        ("model, T5 on the CPU, VAE tiling", max(transformer, vae_tiled)),
    ]
    for resident in (20, 10, 0):
        swap = tr["other"] + (resident + 2) * tr["block"] + tr["activations"]
        rows.append((f"block_swap, {resident} of {tr['blocks']} blocks resident, T5 on the CPU, VAE tiling",
                     max(swap, vae_tiled)))
    rows.append(("sequential, T5 on the CPU, VAE tiling", max(tr["largest_layer"] + tr["activations"], vae_tiled)))
    return [(name, peak + MARGIN_BYTES) for name, peak in rows]


CALIBRATION_CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
import vram_trace as vt
torch.set_num_threads(2)
part, real = sys.argv[1], sys.argv[2] == "real"
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
config = vt.TransformerConfig(**{{**vt.COGVIDEOX_5B_CLASS_TRANSFORMER.__dict__, "num_layers": 2}})
if not real:
    trace = (vt.trace_transformer(320, 192, 9, 226, config=config, dtype=torch.float32) if part == "transformer"
             else vt.trace_vae(320, 192, 9, dtype=torch.float32, parts=("decode",)))
    print(trace["activations" if part == "transformer" else "decode"])
    sys.exit()
if part == "transformer":
    model = vt.DropletVideoTransformer3DModel(config).eval().requires_grad_(False)
    model.init_buffers()
    inputs = vt.transformer_inputs(config, 320, 192, 9, 226, torch.float32)
    run = lambda: model(**inputs)
else:
    from diffusers import AutoencoderKLCogVideoX
    vae = AutoencoderKLCogVideoX(**vt.VaeConfig().diffusers_kwargs()).eval().requires_grad_(False)
    vt.trim_vae_memory(vae)
    latents = torch.randn(1, 16, *vt.latent_grid(320, 192, 9))
    run = lambda: vt.decode_latents(vae, latents)
open("/proc/self/clear_refs", "w").write("5")  # resets the peak RSS to the current RSS
before = status("VmRSS")
with torch.no_grad():
    run()
print(status("VmHWM") - before)
"""


def calibrate() -> None:
    """Measured peak RSS growth / traced activations, transformer (2 blocks) and VAE decode, CPU fp32."""
    code = CALIBRATION_CHILD.format(bench=str(Path(__file__).resolve().parent))
    for part in ("transformer", "vae"):
        values = [int(subprocess.run([sys.executable, "-c", code, part, kind], capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for kind in ("real", "fake")]
        print(f"calibration, {part} at 320x192x9 fp32 on the CPU: measured {values[0] / 2**20:.0f} MiB, traced "
              f"{values[1] / 2**20:.0f} MiB, ratio {values[0] / values[1]:.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=672)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--frames", type=int, default=85)
    p.add_argument("--text-tokens", type=int, default=400)
    p.add_argument("--calibrate", action="store_true", help="also compare with real CPU runs at a small size")
    args = p.parse_args(argv)
    shapes.check_size(args.width, args.height)
    size = dict(width=args.width, height=args.height, frames=shapes.round_frames(args.frames))
    tr = trace_transformer(**size, text_tokens=args.text_tokens)
    tr_fp8 = trace_transformer(**size, text_tokens=args.text_tokens, fp8=True)
    vae, t5 = trace_vae(**size), trace_t5(args.text_tokens)
    print(f"traced with fake tensors, bf16, {args.width}x{args.height}x{size['frames']}, CFG batch 2, "
          f"{args.text_tokens} text tokens")
    print(f"transformer: weights {gib(tr['weights'])} + activations {gib(tr['activations'])}; fp8 blocks: weights "
          f"{gib(tr_fp8['weights'])} + activations {gib(tr_fp8['activations'])}")
    print(f"VAE: weights {gib(vae['weights'])}; decode activations {gib(vae['decode'])} (tiled "
          f"{gib(vae['decode_tiled'])}), encode {gib(vae['encode'])} (tiled {gib(vae['encode_tiled'])})")
    print(f"T5-XXL: weights {gib(t5['weights'])} (fp8: {gib(t5['fp8_weights'])}) + activations "
          f"{gib(t5['activations'])}")
    print("\n| offload mode | traced peak + 1.5 GiB margin |\n|---|---|")
    for name, peak in mode_table(tr, tr_fp8, vae, t5):
        print(f"| {name} | {gib(peak)} |")
    if args.calibrate:
        calibrate()


if __name__ == "__main__":
    main()
