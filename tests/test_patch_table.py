"""tools/comfy_patch_table.py's verdicts, on recorded results (the tool itself runs against a real
ComfyUI server: docs/core_patches.md)."""

import comfy_patch_table as tool

OK = {"status": "success", "max_diff": None, "scale": None}


def run(max_diff, scale=2.0):
    return {"status": "success", "max_diff": max_diff, "scale": scale}


def test_latents_that_differ_act_and_equal_ones_have_no_effect():
    assert tool.classify(OK, run(0.5))[0] == "acts"
    assert tool.classify(OK, run(0.0)) == ("no effect", "")
    assert tool.classify(OK, run(tool.TOLERANCE))[0] == "no effect"  # within the tolerance of the scale (2.0)
    assert tool.classify(OK, run(3 * tool.TOLERANCE))[0] == "acts"
    assert tool.classify(OK, {"status": "success", "max_diff": None, "scale": None}) == (
        "acts", "the latent's shape changed")


def test_errors_are_refusals_when_they_say_what_to_do_and_failures_otherwise():
    refusal = {"status": "error", "exception_type": "ValueError", "message": "CFGZeroStar  is\na core\n patch"}
    assert tool.classify(OK, refusal) == ("refused", "CFGZeroStar is a core patch")  # one line for the table
    assert tool.classify(OK, {"status": "rejected", "message": "Prompt outputs failed validation"})[0] == "refused"
    crash = {"status": "error", "exception_type": "AttributeError", "message": "no attribute 'in_channels'"}
    assert tool.classify(OK, crash) == ("fails", "AttributeError: no attribute 'in_channels'")
    assert tool.classify(OK, {"status": "timeout", "message": "not finished within 9 s"})[0] == "fails"
    assert tool.classify(OK, {"status": "absent"})[0] == "absent"
    broken = {"status": "error", "exception_type": "RuntimeError", "message": "no model"}
    assert tool.classify(broken, run(0.5)) == ("fails", "the unpatched graph failed: no model")


def test_the_table_counts_verdicts_and_says_why_a_patch_did_nothing():
    records = {"baseline": {"KSampler": OK, "DropletVideoSampler": OK}, "patches": {
        "APG": {"category": "model/sampling/custom", "settings": {}, "KSampler": run(0.5),
                "DropletVideoSampler": run(0.0)},
        "FreeU_V2": {"category": "model/patch/unet", "settings": {"b1": 1.3}, "KSampler": run(0.0),
                     "DropletVideoSampler": run(0.0)},
        "Mahiro": {"category": "experimental", "settings": {}, "KSampler": run(0.5),
                   "DropletVideoSampler": {"status": "error", "exception_type": "ValueError",
                                           "message": "use core KSampler | for Mahiro"}},
    }}
    text = tool.render(records, {"command": "python tools/comfy_patch_table.py", "comfyui_version": "0.33.0",
                                 "commit": "abc", "date": "2026-12-04"})
    assert "ComfyUI 0.33.0" in text and "python tools/comfy_patch_table.py" in text
    assert "| KSampler | 2 | 1 | 0 | 0 | 0 |" in text and "| DropletVideoSampler | 0 | 2 | 1 | 0 | 0 |" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ") and " | " in line}
    assert rows["APG"].endswith("the DropletVideo Sampler ran without it; core KSampler applies it |")
    assert rows["FreeU_V2"].endswith(f"{tool.REASONS['FreeU_V2']} |") and "b1=1.3" in rows["FreeU_V2"]
    assert "**refused**: use core KSampler \\| for Mahiro" in rows["Mahiro"] and rows["Mahiro"].endswith("|  |")


def test_a_failure_says_whether_core_cogvideox_fails_alike():
    assert "fails the same on core's own CogVideoX" in tool.why_no_effect("FreeU_V2", "fails", "fails")
    assert "a failure to fix" in tool.why_no_effect("SomeNewPatch", "acts", "fails")
    assert tool.why_no_effect("CFGZeroStar", "acts", "refused") == ""
