"""Benchmark (not a test): peak memory and time of writing a quantized transformer at the release's
shapes (random bf16 weights in COGVIDEOX_5B_CLASS_TRANSFORMER's shapes, `--blocks` of its 42 blocks), against
the size of its bf16 weights: the writer holds its output and one source layer, so the peak
should stay near one bf16 copy (below it for the 4/8-bit formats), never two.

    /path/to/comfy/python bench/quant_memory.py --comfyui /path/to/ComfyUI --format float8_e4m3fn \\
        [--blocks 42] [--device cpu] [--dir /big/disk]

Disk: the bf16 file (11.1 GB at 42 blocks) plus the output (5.8 GB fp8, about 3.3 GB 4-bit).
The weights are random; their values do not change memory or time. Prints one JSON line.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_source(path: Path, blocks: int) -> int:
    """A bf16 release-shaped transformer file with `blocks` blocks; its tensor bytes."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, config_to_dict
    from droplet_core.transformer import DropletVideoTransformer3DModel

    config = dataclasses.replace(COGVIDEOX_5B_CLASS_TRANSFORMER, num_layers=blocks)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DropletVideoTransformer3DModel(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.empty(s, dtype=torch.bfloat16).uniform_(-0.03, 0.03, generator=generator)
             for k, s in shapes.items()}
    config_json = json.dumps(config_to_dict(config, "DropletVideoTransformer3DModel"))
    save_file(state, str(path), metadata={"config": config_json})
    return sum(t.numel() * 2 for t in state.values())


def quantize_in_fresh_process(args, source: Path, out: Path) -> dict:
    code = f"""
import json, resource, sys, time
sys.path[:0] = [{args.comfyui!r}, {str(ROOT / 'tools')!r}]
from quantize_transformer import writer_module
from pathlib import Path
writer = writer_module(Path({args.comfyui!r}))
before = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))  # kB, now
start = time.time()
writer.write_quantized({str(source)!r}, {str(out)!r}, {args.format!r}, device={args.device!r})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
print(json.dumps({{"seconds": time.time() - start, "peak_mib": peak / 1024,
                  "before_mib": before / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--format", default="float8_e4m3fn")
    parser.add_argument("--blocks", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where the two files go (default: a temp folder)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    folder = Path(tempfile.mkdtemp(prefix="droplet_quant_mem_", dir=args.dir))
    source, out = folder / "bf16.safetensors", folder / f"{args.format}.safetensors"
    started = time.time()
    bf16_bytes = write_source(source, args.blocks)
    written = time.time() - started
    measured = quantize_in_fresh_process(args, source, out)
    result = {"format": args.format, "blocks": args.blocks, "device": args.device, "bf16_gib": bf16_bytes / 2**30,
              "out_gib": out.stat().st_size / 2**30, "source_write_s": written, "quantize_s": measured["seconds"],
              "peak_gib": measured["peak_mib"] / 1024, "import_gib": measured["before_mib"] / 1024,
              "peak_over_bf16": (measured["peak_mib"] - measured["before_mib"]) * 2**20 / bf16_bytes}
    source.unlink()
    out.unlink()
    folder.rmdir()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
