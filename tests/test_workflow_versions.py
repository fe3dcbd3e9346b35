"""Every shipped workflow runs on both ComfyUI versions the pack is tested with, or says which one
it needs, in its Note and in the README's workflow table.

tests/comfy_core_nodes.json records the core nodes the workflows use as ComfyUI 0.33.0 defines
them; tests/comfy_core_nodes_0.8.0.json the same nodes in ComfyUI 0.8.0 (null where 0.8.0 has
none), read from each version's node classes (INPUT_TYPES, RETURN_TYPES). A workflow needs 0.33
when one of its core nodes is absent in 0.8.0, gives other outputs there (0.8.0's Train LoRA
returns MODEL first, so the graph fails validation), lacks an input the workflow links into, or
requires an input 0.33's node does not have.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
NOTE_TYPES = ("Note", "MarkdownNote")
NEEDS = "Needs ComfyUI 0.33"  # the Note's sentence
README_MARK = "(ComfyUI 0.33)"  # the README row's mark
CORE_0_33 = json.loads((Path(__file__).parent / "comfy_core_nodes.json").read_text())["nodes"]
CORE_0_8 = json.loads((Path(__file__).parent / "comfy_core_nodes_0.8.0.json").read_text())["nodes"]


def kinds(inputs: dict) -> dict:
    """{input name: type}, a list of choices counted as COMBO (as /object_info and INPUT_TYPES differ)."""
    return {name: spec[0] if isinstance(spec[0], str) else "COMBO" for name, spec in inputs.items()}


def differences_in_0_8(node: dict) -> list:
    """Why this workflow node would not validate on ComfyUI 0.8.0 (empty: it would)."""
    old, new = CORE_0_8.get(node["type"], "unrecorded"), CORE_0_33[node["type"]]
    if old is None:
        return [f"{node['type']} is absent"]
    assert old != "unrecorded", f"{node['type']}: record it in tests/comfy_core_nodes_0.8.0.json"
    problems = []
    if old["output"] != list(new["output"]):
        problems.append(f"{node['type']} outputs {old['output']}, not {list(new['output'])}")
    known = {**old["required"], **old["optional"]}
    linked = [i["name"] for i in node["inputs"] if i.get("link") is not None]
    problems += [f"{node['type']} has no input {name}" for name in linked if name not in known]
    ours = {**kinds(new["input"].get("required", {})), **kinds(new["input"].get("optional", {}))}
    problems += [f"{node['type']} requires {name} ({kind})" for name, kind in old["required"].items()
                 if ours.get(name) != kind]
    return problems


def needs_0_33(workflow: dict) -> list:
    return [problem for node in workflow["nodes"] if node["type"] in CORE_0_33 and node["type"] not in NOTE_TYPES
            for problem in differences_in_0_8(node)]


def note_text(workflow: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in NOTE_TYPES)


def readme_row(name: str) -> str:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README's workflow table has {len(rows)} rows for {name}"
    return rows[0]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_workflow_says_it_needs_comfyui_0_33_exactly_when_it_does(path):
    workflow = json.loads(path.read_text())
    problems = needs_0_33(workflow)
    note, row = note_text(workflow), readme_row(path.name)
    if problems:
        assert NEEDS in note, f"{path.name} needs ComfyUI 0.33 ({'; '.join(problems)}): its Note must say '{NEEDS}'"
        assert README_MARK in row, f"{path.name} needs ComfyUI 0.33: mark its README row {README_MARK}"
    else:
        assert NEEDS not in note and README_MARK not in row, f"{path.name} runs on ComfyUI 0.8.0 too"


def shipped_with(node_type: str) -> dict:
    """The first shipped workflow with a node of this type."""
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text())
        if any(node["type"] == node_type for node in workflow["nodes"]):
            return workflow
    raise AssertionError(f"no shipped workflow has a {node_type} node")


def test_the_check_finds_what_0_8_0_lacks_or_defines_otherwise():
    """The kinds of difference, on the shipped graphs that have them."""
    train = needs_0_33(shipped_with("TrainLoraNode"))
    assert any(re.match(r"TrainLoraNode outputs \['MODEL', 'LORA_MODEL'", problem) for problem in train), train
    assert "ModelAttentionBackend is absent" in needs_0_33(shipped_with("ModelAttentionBackend"))
    assert "FrameInterpolate is absent" in needs_0_33(shipped_with("FrameInterpolate"))
