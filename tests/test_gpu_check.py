"""bench/gpu_check.py's dry run: every stage of the GPU check runs its code on the CPU at a small
size and the JSON report holds a result for each (CI cannot run the real check: it needs a GPU).
On a real ComfyUI (COMFYUI_PATH) the ComfyUI-path and quantized stages run too, on one format."""

import importlib.util
import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES_WITH_COMFY = ("comfy_path", "quant", "quant_capped", "comfy_dynamic")


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_reports_every_stage(tmp_path, monkeypatch):
    check = gpu_check()
    monkeypatch.setenv("DROPLET_TINY_DIR", str(tmp_path / "tiny"))
    out = tmp_path / "report.json"
    args = ["--dry-run", "--out", str(out)]
    comfyui = os.environ.get("COMFYUI_PATH")
    if comfyui:  # one fast format: comfy-kitchen's CPU code is slow for the 4-bit ones
        args += ["--comfyui", comfyui, "--format", "int8_tensorwise", "--stage", "cuda_vs_cpu", "--stage", "engine",
                 *(x for stage in STAGES_WITH_COMFY for x in ("--stage", stage))]
    check.main(args)
    stages = json.loads(out.read_text())["stages"]
    assert not {name: s["error"] for name, s in stages.items() if "error" in s}
    expected = check.ORDER if not comfyui else ("cuda_vs_cpu", "engine", *STAGES_WITH_COMFY)
    assert set(expected) <= set(stages)
    for setting in ("bf16", "fp8_e4m3fn"):
        assert stages["engine"][setting]["s_per_step"] > 0 and stages["engine"][setting]["finite"]
    assert stages["cuda_vs_cpu"]["cpu_output_norm"] > 0
    if not torch.cuda.is_available():
        assert stages["cuda_vs_cpu"]["cuda"] == "skipped: no CUDA"
    if comfyui:
        for stage, setting in (("comfy_path", "bf16"), ("quant", "int8_tensorwise"),
                               ("quant_capped", "int8_tensorwise")):
            assert stages[stage][setting].get("finite"), stages[stage][setting]
    else:
        assert stages["block_swap"]["bf16_1_resident"]["finite"]
        assert stages["engine_capped"]["fp8_e4m3fn"]["finite"]
        assert stages["quant"]["skipped"].startswith("no ComfyUI")


def test_a_spent_budget_still_writes_the_report(tmp_path):
    """No stage starts after the budget; the report says so for each (a cut-off run still reports)."""
    check = gpu_check()
    out = tmp_path / "report.json"
    check.main(["--dry-run", "--out", str(out), "--budget-s", "0"])
    stages = json.loads(out.read_text())["stages"]
    assert all(stages[name]["skipped"].startswith("time budget") for name in check.ORDER)
