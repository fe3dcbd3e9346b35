"""CI's real-ComfyUI part (.ci/real_comfyui): it runs every test module that needs ComfyUI, and a
clone without the ComfyUI archives beside it is told so and passes on."""

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "real_comfyui"
# A module needs ComfyUI when it imports it (or the node fixtures, the workflow tool, which do), when
# a test takes the pack (imported as ComfyUI imports a custom node), or when it reads the variable
# that names a real ComfyUI.
NEEDS_COMFYUI = re.compile(r"^(?:import|from) (?:comfy|comfy_extras|comfy_api|folder_paths|node_fixtures|run_workflow)"
                           r"\b|^def test_\w+\([^)]*\bpack\b|COMFYUI_PATH", re.M)


def node_test_globs() -> list:
    line = re.search(r"^NODE_TESTS=\((.*)\)$", SCRIPT.read_text(encoding="utf-8"), re.M)
    assert line, ".ci/real_comfyui lost its NODE_TESTS=(...) line"
    return line.group(1).split()


def test_every_test_module_that_needs_comfyui_runs_on_the_real_hosts():
    selected = {path for pattern in node_test_globs() for path in ROOT.glob(pattern)}
    modules = set((ROOT / "tests").glob("test_*.py")) - {Path(__file__)}  # this one only names the variable
    needing = {path for path in modules if NEEDS_COMFYUI.search(path.read_text("utf-8"))}
    left_out = sorted(path.name for path in needing - selected)
    assert not left_out, (f"{left_out} need ComfyUI but no NODE_TESTS glob in .ci/real_comfyui matches them: name "
                          f"them tests/test_nodes_*.py or add them there")
    assert ROOT / "tests" / "test_nodes.py" in needing  # the pattern still recognises a node test


def test_every_host_dependent_test_the_older_release_runs_exists():
    """0.8.0 runs HOST_TESTS only: a renamed file or test there would silently run nothing."""
    body = re.search(r"^HOST_TESTS=\((.*?)\)$", SCRIPT.read_text(encoding="utf-8"), re.M | re.S)
    assert body, ".ci/real_comfyui lost its HOST_TESTS=(...) list"
    for entry in body.group(1).split():
        pattern, _, test = entry.partition("::")
        files = sorted(ROOT.glob(pattern))
        assert files, f"HOST_TESTS names {pattern}, which matches no file"
        assert not test or any(f"def {test}(" in path.read_text("utf-8") for path in files), f"no test {entry}"


def test_without_the_archives_the_real_comfyui_part_says_so_and_passes(tmp_path):
    checkout = tmp_path / "clone"  # no shared/ beside it, as in a user's clone
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / ".ci" / SCRIPT.name)
    done = subprocess.run(["bash", str(checkout / ".ci" / SCRIPT.name)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "real ComfyUI: skipped, no ../shared/comfyui beside this checkout" in done.stdout
    assert not (checkout / ".comfyui").exists()  # nothing was unpacked or installed
