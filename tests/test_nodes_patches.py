"""ComfyUI's model patches on the native MODEL: attention through ComfyUI's attention functions
(launch flags, Model Attention Backend, transformer_options["optimized_attention_override"]),
and what the DropletVideo Sampler does with each patch on its MODEL: runs it (diffusion-model
wrappers, DiT block replacements, the attention override) or refuses it by name. With
COMFYUI_PATH the core patch nodes themselves are put before the sampler."""

import importlib
import os
import sys

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import run_workflow as tool
from node_fixtures import as_image, conds, image_cond, loaded, run, sample, start_image  # noqa: F401
from test_nodes_lora import core_nodes_module

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
STEPS = 2


@pytest.fixture(scope="module")
def small_cond(pack, loaded, start_image):  # noqa: F811
    return image_cond(pack, loaded[1], start=as_image(start_image), width=64, height=64, frames=5)


@pytest.fixture(scope="module")
def plain(pack, loaded, conds, small_cond):  # noqa: F811
    return sample(pack, loaded[0], conds, small_cond, steps=STEPS)["samples"]


def patched(loaded, **transformer_options):  # noqa: F811
    model = loaded[0].clone()
    model.model_options["transformer_options"] = {**model.model_options["transformer_options"],
                                                  **transformer_options}
    return model


def counting_override(calls: list, result=None):
    """An optimized_attention_override that records each call and runs the original (or returns `result`)."""
    def override(function, query, key, value, heads, **kwargs):
        calls.append((tuple(query.shape), heads, kwargs.get("skip_reshape")))
        out = function(query, key, value, heads, **kwargs)
        return out if result is None else result(out)
    return override


# 1. Attention through ComfyUI --------------------------------------------------------------------------

def forward_inputs(model):
    """A small call of the native model as ComfyUI's apply_model makes it ([B, C, F, H, W], 33 channels)."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.in_channels, 2, 8, 8, generator=generator)
    context = torch.randn(2, 7, config.text_embed_dim, generator=generator)
    return x, torch.tensor([500.0, 500.0]), context, torch.tensor([8.0])


def test_the_native_forward_calls_the_override_once_per_block(loaded):  # noqa: F811
    model = loaded[0].model.diffusion_model
    x, t, context, fps = forward_inputs(model)
    calls = []
    out = model(x, t, context, fps=fps, transformer_options={"optimized_attention_override": counting_override(calls)})
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    tokens = 7 + 2 * (8 // model.config.patch_size) ** 2
    assert calls == [((2, heads, tokens, head_dim), heads, True)] * model.config.num_layers
    torch.testing.assert_close(out, model(x, t, context, fps=fps), atol=0, rtol=0)


@pytest.mark.parametrize("choice", ["comfy", "sdpa"])
def test_the_loader_attention_choice_picks_comfyuis_function(pack, choice, monkeypatch):
    """comfy: the function ComfyUI's launch flags chose (optimized_attention); sdpa: its PyTorch one."""
    calls = []
    chosen = comfy_attention.optimized_attention

    def launch_flag_choice(*args, **kwargs):
        calls.append(1)
        return chosen(*args, **kwargs)

    monkeypatch.setattr(comfy_attention, "optimized_attention", launch_flag_choice)
    model = run(pack, "DropletVideoTransformerLoader", transformer_name="tiny-transformer", precision="fp32",
                weight_format="default", attention=choice)[0].model.diffusion_model
    x, t, context, fps = forward_inputs(model)
    override_calls = []
    model(x, t, context, fps=fps, transformer_options={"optimized_attention_override": counting_override(override_calls)})
    assert len(calls) == (model.config.num_layers if choice == "comfy" else 0)
    assert len(override_calls) == model.config.num_layers  # the override applies whatever the choice


def test_an_older_comfyui_without_attention_options_still_runs(pack, monkeypatch):
    """Before wrap_attn and the registry: no transformer_options to ComfyUI's function; sdpa is the pack's own."""
    native = importlib.import_module(f"{pack.__name__}.nodes.native.attention")
    monkeypatch.delattr(comfy_attention, "get_attention_function")
    monkeypatch.delattr(comfy_attention, "wrap_attn")
    query, key, value = torch.randn(3, 1, 2, 5, 4).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value).transpose(1, 2).flatten(2)
    torch.testing.assert_close(native.comfy_attention_fn("sdpa")(query, key, value, {"x": 1}), expected, atol=0, rtol=0)
    received = []
    monkeypatch.setattr(comfy_attention, "optimized_attention", lambda *args, **kwargs: received.append(kwargs))
    native.comfy_attention_fn("comfy")(query, key, value, {"optimized_attention_override": None})
    assert received == [{"skip_reshape": True}]


def test_the_sampler_runs_the_attention_override_on_every_block_of_every_step(pack, loaded, conds, small_cond,  # noqa: F811
                                                                            plain):
    calls = []
    model = patched(loaded, optimized_attention_override=counting_override(calls))
    latent = sample(pack, model, conds, small_cond, steps=STEPS)["samples"]
    assert len(calls) == STEPS * loaded[0].model.droplet_config.num_layers
    torch.testing.assert_close(latent, plain, atol=0, rtol=0)  # the original attention: the same video
    zeroing = patched(loaded, optimized_attention_override=counting_override([], torch.zeros_like))
    assert (sample(pack, zeroing, conds, small_cond, steps=STEPS)["samples"] - plain).abs().max() > 1e-3


def test_model_attention_backend_pytorch_keeps_the_video(pack, loaded, conds, small_cond, plain):  # noqa: F811
    """What core Model Attention Backend does (ModelPatcher.set_model_optimized_attention)."""
    model = loaded[0].clone()
    if not hasattr(model, "set_model_optimized_attention"):
        pytest.skip("this ComfyUI has no Model Attention Backend (ModelPatcher.set_model_optimized_attention)")
    calls = []

    def pytorch_attention(*args, **kwargs):
        calls.append(1)
        return comfy_attention.get_attention_function("pytorch")(*args, **kwargs)

    model.set_model_optimized_attention(pytorch_attention)
    latent = sample(pack, model, conds, small_cond, steps=STEPS)["samples"]
    assert len(calls) == STEPS * loaded[0].model.droplet_config.num_layers
    torch.testing.assert_close(latent, plain, atol=1e-5, rtol=0)


# 2. What the DropletVideo Sampler runs -----------------------------------------------------------------

def test_diffusion_model_wrappers_are_entered_each_step(pack, loaded, conds, small_cond, plain):  # noqa: F811
    entered = []

    def wrapper(executor, *args, **kwargs):
        entered.append(kwargs.get("transformer_options", args[4] if len(args) > 4 else None) is not None)
        return executor(*args, **kwargs)

    in_options = patched(loaded, wrappers={"diffusion_model": {"test": [wrapper]}})
    on_patcher = loaded[0].clone()
    on_patcher.add_wrapper_with_key("diffusion_model", "test", wrapper)  # where core nodes put theirs
    for model in (in_options, on_patcher):
        entered.clear()
        latent = sample(pack, model, conds, small_cond, steps=STEPS)["samples"]
        assert entered == [True] * STEPS
        torch.testing.assert_close(latent, plain, atol=0, rtol=0)


def test_dit_block_replacements_run(pack, loaded, conds, small_cond, plain):  # noqa: F811
    seen = []

    def identity(args, extra):
        seen.append(sorted(args))
        return extra["original_block"](args)

    def zeroing(args, extra):
        out = extra["original_block"](args)
        return {"img": torch.zeros_like(out["img"]), "txt": out["txt"]}

    same = sample(pack, patched(loaded, patches_replace={"dit": {("double_block", 1): identity}}), conds, small_cond,
                  steps=STEPS)["samples"]
    assert seen == [["img", "pe", "transformer_options", "txt", "vec"]] * STEPS
    torch.testing.assert_close(same, plain, atol=0, rtol=0)
    zeroed = sample(pack, patched(loaded, patches_replace={"dit": {("double_block", 1): zeroing}}), conds, small_cond,
                    steps=STEPS)["samples"]
    assert (zeroed - plain).abs().max() > 1e-3


def set_option(name, value):
    def apply(model):
        model.model_options[name] = value
    return apply


def set_transformer_option(name, value):
    def apply(model):
        model.model_options["transformer_options"][name] = value
    return apply


def noop(*args, **kwargs):
    return None


# Core context windows are refused before these, with their own fix (test_nodes_context_windows.py).
REFUSED = {
    "cfg_function": (set_option("sampler_cfg_function", noop), r"sampler_cfg_function \(set by RescaleCFG"),
    "post_cfg": (set_option("sampler_post_cfg_function", [noop]), r"sampler_post_cfg_function \(set by CFGZeroStar"),
    "pre_cfg": (set_option("sampler_pre_cfg_function", [noop]), r"sampler_pre_cfg_function \(set by APG, TCFG"),
    "calc_cond_batch": (set_option("sampler_calc_cond_batch_function", noop),
                        r"sampler_calc_cond_batch_function \(set by SkipLayerGuidanceDiTSimple\)"),
    "unet_wrapper": (set_option("model_function_wrapper", noop), r"model_function_wrapper \(set by a UNet function"),
    "denoise_mask": (set_option("denoise_mask_function", noop), r"denoise_mask_function \(set by DifferentialDiff"),
    "outer_sample": (lambda m: m.add_wrapper_with_key("outer_sample", "easycache", noop),
                     r"wrappers outer_sample \(set by EasyCache"),
    "apply_model": (lambda m: m.add_wrapper_with_key("apply_model", "torch.compile", noop),
                    r"wrappers apply_model \(set by TorchCompileModel\)"),
    "easycache": (set_transformer_option("easycache", object()), r"easycache \(set by EasyCache"),
    "model_patch": (set_transformer_option("patches", {"attn1_patch": [noop]}), r"patches \(set by a model patch"),
    "attn1_replace": (set_transformer_option("patches_replace", {"attn1": {("input", 1, 0): noop}}),
                      r"patches_replace attn1 input"),
    "model_sampling": (lambda m: m.add_object_patch("model_sampling", object()),
                       r"object patch model_sampling \(set by ModelSamplingDiscrete"),
    "unknown_option": (set_transformer_option("some_custom_key", 1), r"some_custom_key"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_patches_only_core_sampling_runs_are_refused_by_name(pack, loaded, conds, small_cond, kind):  # noqa: F811
    apply, message = REFUSED[kind]
    model = loaded[0].clone()
    model.model_options["transformer_options"] = dict(model.model_options["transformer_options"])
    apply(model)
    with pytest.raises(ValueError, match=f"cannot run these patches on its MODEL: {message}.*Use core KSampler"):
        sample(pack, model, conds, small_cond, steps=STEPS)


def test_every_refused_patch_is_named_in_one_message(pack, loaded, conds, small_cond):  # noqa: F811
    model = loaded[0].clone()
    model.model_options = {**model.model_options, "sampler_cfg_function": noop, "sampler_pre_cfg_function": [noop]}
    with pytest.raises(ValueError, match="sampler_cfg_function .*; sampler_pre_cfg_function "):
        sample(pack, model, conds, small_cond, steps=STEPS)


# The core patch nodes themselves (real ComfyUI) ---------------------------------------------------------

CORE_PATCHES = {  # node id: (module, class, inputs besides the model, what the sampler says or None: runs)
    "ModelAttentionBackend": ("comfy_extras.nodes_model_advanced", "ModelAttentionBackend",
                              {"attention": "pytorch attention"}, None),
    "CFGZeroStar": ("comfy_extras.nodes_cfg", "CFGZeroStar", {}, "sampler_post_cfg_function"),
    "RescaleCFG": ("comfy_extras.nodes_model_advanced", "RescaleCFG", {"multiplier": 0.7}, "sampler_cfg_function"),
    "APG": ("comfy_extras.nodes_apg", "APG", {"eta": 1.0, "norm_threshold": 5.0, "momentum": -0.5},
            "sampler_pre_cfg_function"),
    "TCFG": ("comfy_extras.nodes_tcfg", "TCFG", {}, "sampler_pre_cfg_function"),
    "SkipLayerGuidanceDiT": ("comfy_extras.nodes_slg", "SkipLayerGuidanceDiT",
                             {"scale": 3.0, "start_percent": 0.01, "end_percent": 0.15, "double_layers": "1"},
                             "sampler_post_cfg_function"),
    "EasyCache": ("comfy_extras.nodes_easycache", "EasyCacheNode",
                  {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95, "verbose": False},
                  "easycache"),
    "TorchCompileModel": ("comfy_extras.nodes_torch_compile", "TorchCompileModel", {"backend": "inductor"},
                          "torch_compile_kwargs"),
    "ModelSamplingDiscrete": ("comfy_extras.nodes_model_advanced", "ModelSamplingDiscrete",
                              {"sampling": "v_prediction", "zsnr": True}, "object patch model_sampling"),
    "DifferentialDiffusion": ("comfy_extras.nodes_differential_diffusion", "DifferentialDiffusion", {},
                              "denoise_mask_function"),
}


@pytest.mark.skipif(not COMFYUI_PATH, reason="the core patch nodes need a real ComfyUI: set COMFYUI_PATH")
@pytest.mark.parametrize("node", sorted(CORE_PATCHES))
def test_core_patch_nodes_before_the_sampler_run_or_are_refused(pack, loaded, conds, small_cond, plain, node,  # noqa: F811
                                                                 monkeypatch):
    module, cls, inputs, refused = CORE_PATCHES[node]
    monkeypatch.setitem(sys.modules, "nodes", core_nodes_module())  # comfy_extras import ComfyUI's nodes.py
    node_class = getattr(importlib.import_module(module), cls, None)
    if node_class is None:
        pytest.skip(f"this ComfyUI has no {node}")
    model = tool.call_node(node_class, {"model": loaded[0], **inputs})[0]
    if refused is None:
        latent = sample(pack, model, conds, small_cond, steps=STEPS)["samples"]
        torch.testing.assert_close(latent, plain, atol=1e-5, rtol=0)
        return
    with pytest.raises(ValueError, match=f"cannot run these patches on its MODEL: .*{refused}.*Use core KSampler"):
        sample(pack, model, conds, small_cond, steps=STEPS)
