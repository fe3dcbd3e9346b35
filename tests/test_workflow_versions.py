"""Every shipped workflow runs on both ComfyUI versions the pack is tested with, or says which one
it needs, in its Note and in the README's workflow table.

tests/comfy_core_nodes.json records the core nodes the workflows use as ComfyUI 0.33.0 defines
them; tests/comfy_core_nodes_0.8.0.json the same nodes in ComfyUI 0.8.0 (null where 0.8.0 has
none), read from each version's node classes (INPUT_TYPES, RETURN_TYPES). A workflow needs 0.33
when one of its core nodes is absent in 0.8.0, gives another type there at an output the graph
links from (0.8.0's Train LoRA returns MODEL first, so the graph fails validation), lacks an input
the graph links into, or requires a socket the graph leaves unlinked.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
NOTE_TYPES = ("Note", "MarkdownNote")
NEEDS = "Needs ComfyUI 0.33"  # the Note's sentence
README_MARK = "(ComfyUI 0.33)"  # the README row's mark
CORE_0_33 = json.loads((Path(__file__).parent / "comfy_core_nodes.json").read_text())["nodes"]
CORE_0_8 = json.loads((Path(__file__).parent / "comfy_core_nodes_0.8.0.json").read_text())["nodes"]


WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}  # filled from the node's widget values, not by links


def differences_in_0_8(node: dict) -> list:
    """Why this workflow node would not validate on ComfyUI 0.8.0 (empty: it would). What counts is
    what the graph uses: the outputs it links from, the inputs it links into, and the sockets 0.8.0
    requires; widgets are filled from the saved values by position, and an output nothing uses is
    ignored (0.33's Save Video returns its VIDEO, 0.8.0's nothing)."""
    old = CORE_0_8.get(node["type"], "unrecorded")
    if old is None:
        return [f"{node['type']} is absent"]
    assert old != "unrecorded", f"{node['type']}: record it in tests/comfy_core_nodes_0.8.0.json"
    problems = []
    for slot, output in enumerate(node["outputs"]):
        if output.get("links"):
            there = old["output"][slot] if slot < len(old["output"]) else None
            if there != output["type"]:
                problems.append(f"{node['type']} output {slot} is {there} in 0.8.0, not {output['type']}")
    known = {**old["required"], **old["optional"]}
    linked = {i["name"]: i["type"] for i in node["inputs"] if i.get("link") is not None}
    problems += [f"{node['type']} has no input {name} ({kind})" for name, kind in linked.items()
                 if known.get(name) not in kind.split(",")]
    problems += [f"{node['type']} requires {name} ({kind}), which the graph does not link"
                 for name, kind in old["required"].items() if kind not in WIDGETS and name not in linked]
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
    assert "TrainLoraNode output 0 is MODEL in 0.8.0, not LORA_MODEL" in train, train
    assert "ModelAttentionBackend is absent" in needs_0_33(shipped_with("ModelAttentionBackend"))
    assert "FrameInterpolate is absent" in needs_0_33(shipped_with("FrameInterpolate"))
