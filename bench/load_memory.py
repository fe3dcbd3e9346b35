"""Load memory of a release-size transformer (benchmark, not a test).

Writes the DropletVideo-5B transformer (COGVIDEOX_5B_CLASS_TRANSFORMER: 42 blocks, 48 heads, 33 input
channels) with random bf16 weights to a scratch folder once (~10.4 GiB; never commit it), then,
each in a fresh process, loads it and reports the seconds and the peak anonymous memory
(RssAnon from /proc/self/status, sampled every 10 ms; a memory-mapped file's pages are not
anonymous):
- engine: droplet_core.loading.load_transformer (what the CLI does);
- native: the pack's DropletVideo Transformer Loader node, i.e. ComfyUI's BaseModel and
  ModelPatcher (on the stand-in, or a real ComfyUI with --comfyui), then load_models_gpu.
Each in bf16 (the file's dtype: mapped, not copied) and fp16 (a conversion: one copy).

    python bench/load_memory.py --scratch <a folder with room for the 5B files> [--comfyui /path/to/ComfyUI]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def write_release_transformer(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, config_to_dict
    from droplet_core.transformer import DropletVideoTransformer3DModel

    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DropletVideoTransformer3DModel(COGVIDEOX_5B_CLASS_TRANSFORMER).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) for k, shape in shapes.items()}
    save_file(state, str(weights))
    (folder / "config.json").write_text(json.dumps(config_to_dict(COGVIDEOX_5B_CLASS_TRANSFORMER,
                                                                  "DropletVideoTransformer3DModel")))
    return folder


class AnonPeak:
    """Peak RssAnon of this process, sampled on a thread."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def measure(path: Path, path_kind: str, precision: str) -> dict:
    """One load in this process (run as a child)."""
    import torch
    sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
    import run_workflow

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if path_kind == "native":
        if os.environ.get("COMFYUI_PATH"):
            import comfy.cli_args
            comfy.cli_args.args.cpu = not torch.cuda.is_available()  # what `main.py --cpu` sets
        pack = run_workflow.load_pack(stub=not os.environ.get("COMFYUI_PATH"))
        import comfy.model_management
        import folder_paths
        folder_paths.add_model_folder_path("diffusion_models", str(path.parent))
        node = pack.NODE_CLASS_MAPPINGS["DropletVideoTransformerLoader"]()
    else:
        from droplet_core.loading import load_transformer
    before = AnonPeak.now()
    started = time.perf_counter()
    with AnonPeak() as peak:
        if path_kind == "native":
            model = node.load(path.name, precision)[0]
            comfy.model_management.load_models_gpu([model])
        else:
            model = load_transformer(path, dtype)
    seconds = time.perf_counter() - started
    weights = (path / "diffusion_pytorch_model.safetensors").stat().st_size  # bf16 and fp16: the same bytes
    return {"path": path_kind, "precision": precision, "seconds": round(seconds, 2),
            "peak_anon_gib": round(peak.peak / GIB, 2), "growth_gib": round((peak.peak - before) / GIB, 2),
            "growth_vs_weights": round((peak.peak - before) / weights, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, required=True, help="folder for the 10.4 GiB transformer")
    parser.add_argument("--comfyui", help="a ComfyUI checkout: the native path runs on it instead of the stand-in")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.scratch / "DropletVideo-5B-random-transformer"
    if args.child:
        print(json.dumps(measure(folder, *args.child)))
        return
    write_release_transformer(folder)
    env = dict(os.environ, **({"COMFYUI_PATH": args.comfyui, "PYTHONPATH": args.comfyui} if args.comfyui else {}))
    for path_kind in ("engine", "native"):
        for precision in ("bf16", "fp16"):
            out = subprocess.run([sys.executable, __file__, "--scratch", str(args.scratch), "--child", path_kind,
                                  precision], capture_output=True, text=True, env=env, cwd=ROOT)
            print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"{path_kind} {precision} failed: "
                  f"{out.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
