"""Writes the DropletVideo (or Droplet3D) transformer in one of ComfyUI's quantized formats, from
the command line: what the DropletVideo Save Quantized node does, without a running server.

    python tools/quantize_transformer.py --comfyui /path/to/ComfyUI --list
    python tools/quantize_transformer.py --comfyui /path/to/ComfyUI SOURCE OUT.safetensors --format nvfp4

Run it with ComfyUI's Python (the one with comfy-kitchen). SOURCE is the release's transformer/
folder or a single bf16 .safetensors; OUT is best written into ComfyUI/models/diffusion_models/.
The formats are ComfyUI's own (comfy.quant_ops.QUANT_ALGOS of the given checkout), so the file
is read back exactly by that ComfyUI; droplet_core never imports ComfyUI, so the command lives
here in tools/ and takes the checkout's path. --device cuda quantizes each layer on the GPU
(the 4-bit formats take hours for the 5B model on CPU); memory stays about one bf16 copy either way.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def writer_module(comfyui: Path):
    """The pack's nodes/quantized_writer.py, imported as ComfyUI imports the pack."""
    if not (comfyui / "comfy" / "quant_ops.py").is_file():
        sys.exit(f"{comfyui} is not a ComfyUI checkout with quantized formats (no comfy/quant_ops.py; "
                 f"ComfyUI 0.4.0 or newer has it).")
    sys.path.insert(0, str(comfyui))
    sys.path.insert(0, str(TOOLS))
    import importlib

    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # as `main.py --cpu`: no CUDA set-up without a GPU
    from run_workflow import load_pack  # tools/ is not a package

    pack = load_pack(stub=False)
    return importlib.import_module(pack.__name__ + ".nodes.quantized_writer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (0.4.0 or newer)")
    parser.add_argument("source", nargs="?", type=Path, help="transformer folder or bf16 .safetensors")
    parser.add_argument("out", nargs="?", type=Path, help="the .safetensors to write (never overwritten)")
    parser.add_argument("--format", help="one of the checkout's formats (--list shows them)")
    parser.add_argument("--quantize-modulation", action="store_true",
                        help="also quantize the adaLN modulation Linears (off: docs/quantization.md)")
    parser.add_argument("--device", default="cpu", help="where each layer is quantized: cpu (default) or cuda")
    parser.add_argument("--list", action="store_true", help="print the checkout's formats and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    writer = writer_module(args.comfyui.resolve())
    if args.list:
        print(f"{writer.host_name()}: {', '.join(writer.host_formats()) or 'none (pip install comfy-kitchen)'}")
        return 0
    if not (args.source and args.out and args.format):
        parser.error("give SOURCE, OUT and --format (or --list)")
    start = time.time()
    try:
        writer.write_quantized(args.source, args.out, args.format, args.quantize_modulation, args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.out.stat().st_size / 2**30:.2f} GiB in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
