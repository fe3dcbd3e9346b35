"""Prepares a real ComfyUI for a frontend run of droplet3d_orbit.json on tiny random weights:

    python tests/flux_stand_in/prepare.py --comfyui .comfyui/0.33/ComfyUI --out /tmp/workflows

writes into that ComfyUI's models/ the files the workflow names, from a tiny random Flux in the
release's diffusers layout (flux_files.py): the transformer's shards merged with the command of
docs/droplet3d.md into diffusion_models/flux1-kontext-dev.safetensors, vae/ae.safetensors (the
diffusers VAE file renamed), loras/droplet3d/pytorch_lora_weights.safetensors (diffusers names);
links this folder into custom_nodes/ as the stand-in text encoder; and writes the workflow with
its CLIPTextEncode nodes replaced by FluxStoredConditioning and its DualCLIPLoader removed (the
only change) to --out. The Droplet3D checkpoint is the caller's (a tiny one, by widget override).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

from flux_files import write_kontext_folder, write_kontext_lora  # noqa: E402
from test_comfy_flux_kontext import merge_command  # noqa: E402


def without_text_encoders(workflow: dict) -> dict:
    """CLIPTextEncode -> FluxStoredConditioning (its text widget kept, no clip input); DualCLIPLoader gone."""
    dropped = {n["id"] for n in workflow["nodes"] if n["type"] == "DualCLIPLoader"}
    dropped_links = {link[0] for link in workflow["links"] if link[1] in dropped}
    workflow["nodes"] = [n for n in workflow["nodes"] if n["id"] not in dropped]
    workflow["links"] = [link for link in workflow["links"] if link[0] not in dropped_links]
    for node in workflow["nodes"]:
        if node["type"] == "CLIPTextEncode":
            node["type"] = node["properties"]["Node name for S&R"] = "FluxStoredConditioning"
            node["inputs"] = [i for i in node["inputs"] if i["link"] not in dropped_links]
    return workflow


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfyui", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    models = args.comfyui / "models"
    with tempfile.TemporaryDirectory() as tmp:
        release = write_kontext_folder(Path(tmp) / "FLUX.1-Kontext-dev")
        target = models / "diffusion_models" / "flux1-kontext-dev.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, *merge_command()[1:-2], str(release / "transformer"), str(target)], check=True)
        (models / "vae").mkdir(parents=True, exist_ok=True)
        shutil.copy(release / "vae" / "diffusion_pytorch_model.safetensors", models / "vae" / "ae.safetensors")
    write_kontext_lora(models / "loras" / "droplet3d" / "pytorch_lora_weights.safetensors")
    link = args.comfyui / "custom_nodes" / "flux_stand_in"
    if not link.exists():
        link.symlink_to(HERE)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("droplet3d_orbit.json", "droplet3d_orbit_no_alignment.json"):
        workflow = json.loads((ROOT / "example_workflows" / name).read_text())
        (args.out / name).write_text(json.dumps(without_text_encoders(workflow), indent=1))


if __name__ == "__main__":
    main()
