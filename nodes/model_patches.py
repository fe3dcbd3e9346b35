"""What a MODEL carries besides its weights (ComfyUI's model patches), sorted into what the
DropletVideo Sampler runs and what only core's sampler can run. Nothing is dropped: the
sampler runs the first kind and refuses the second by name; the multi-GPU sampler, whose
workers load the file again, refuses both.

The DropletVideo Sampler keeps the reference's DDIM and CFG and calls the native model's
forward with the MODEL's transformer_options, so it runs what that forward reads:
diffusion-model wrappers, DiT block replacements, the attention override, and the weight
patches and weight wrappers ComfyUI applies when it loads the MODEL (LoRAs).
"""

from typing import NamedTuple

ATTENTION_OVERRIDE = "optimized_attention_override"
DIFFUSION_MODEL_WRAPPERS = "diffusion_model"  # comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
DIT_BLOCK = "double_block"  # the block name DiT replacements use (diffusion_model.py's BLOCK_PATCH)

# Who usually sets a refused patch (core node ids, ComfyUI 0.33).
SETTERS = {
    "sampler_cfg_function": "RescaleCFG, CFGNorm, PerpNeg, RenormCFG, VideoLinearCFGGuidance",
    "sampler_post_cfg_function": "CFGZeroStar, CFGNorm, SkipLayerGuidanceDiT, PerturbedAttentionGuidance, "
                                 "SelfAttentionGuidance, Mahiro, EpsilonScaling, TemporalScoreRescaling",
    "sampler_pre_cfg_function": "APG, TCFG, FreSca, LatentApplyOperationCFG",
    "sampler_calc_cond_batch_function": "SkipLayerGuidanceDiTSimple",
    "model_function_wrapper": "a UNet function wrapper (set_model_unet_function_wrapper)",
    "denoise_mask_function": "DifferentialDiffusion",
    "disable_cfg1_optimization": "a guidance patch (with its CFG function)",
    "context_handler": "Context Windows (Manual); the DropletVideo Sampler's own is long_video",
    "torch_compile_kwargs": "TorchCompileModel",
    "easycache": "EasyCache or LazyCache; the DropletVideo Sampler's own is cache_threshold",
    "rope_options": "ScaleROPE",
    "patches": "a model patch node (set_model_patch)",
    "wrappers outer_sample": "EasyCache or LazyCache",
    "wrappers calc_cond_batch": "EasyCache",
    "wrappers predict_noise": "LazyCache or CFGOverride",
    "wrappers apply_model": "TorchCompileModel",
    "object patch model_sampling": "ModelSamplingDiscrete (or another ModelSampling node) or ModelNoiseScale",
    "object patch manual_cast_dtype": "ModelComputeDtype",
    "object patch latent_format": "a ModelSampling node",
    "hook patches": "Create Hook LoRA / Set Model Hooks",
}
PATCHER_ATTRIBUTES = ("callbacks", "hook_patches", "injections", "additional_models")


class Patch(NamedTuple):
    name: str
    honoured: bool  # by the DropletVideo Sampler

    def described(self) -> str:
        setter = SETTERS.get(self.name)
        return f"{self.name} (set by {setter})" if setter else self.name


def holds_something(value) -> bool:
    if isinstance(value, dict):
        return any(holds_something(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(holds_something(v) for v in value)
    return value is not None and value is not False


def all_wrappers(model) -> dict:
    """{wrapper type: {key: [wrappers]}} from the ModelPatcher and its transformer_options, as core's
    sampler merges them (sampler_helpers.prepare_model_patcher)."""
    merged = {}
    for source in (model.model_options.get("transformer_options", {}).get("wrappers", {}),
                   getattr(model, "wrappers", None) or {}):
        for kind, by_key in source.items():
            for key, wrappers in by_key.items():
                merged.setdefault(kind, {}).setdefault(key, []).extend(wrappers)
    return merged


def transformer_option_patches(options: dict) -> list:
    found = []
    for name, value in options.items():
        if name == "wrappers" or not holds_something(value):
            continue
        if name == "patches_replace":
            found += [Patch(f"patches_replace {kind} {key[0] if isinstance(key, tuple) else key}",
                            kind == "dit" and isinstance(key, tuple) and key[0] == DIT_BLOCK)
                      for kind, by_key in value.items() for key in by_key]
        else:
            found.append(Patch(name, name == ATTENTION_OVERRIDE))
    return list(dict.fromkeys(found))


def model_patches(model) -> list:
    """Every patch this MODEL carries beyond the loader's, each marked honoured or not."""
    found = [Patch(f"{len(model.patches)} weight patches (LoRA)", True)] if model.patches else []
    if holds_something(getattr(model, "weight_wrapper_patches", None)):
        found.append(Patch("weight wrappers", True))
    options = model.model_options
    found += [Patch(name, False) for name, value in options.items()
              if name != "transformer_options" and holds_something(value)]
    found += transformer_option_patches(options.get("transformer_options", {}))
    found += [Patch(f"wrappers {kind}", kind == DIFFUSION_MODEL_WRAPPERS)
              for kind, by_key in all_wrappers(model).items() if holds_something(by_key)]
    found += [Patch(f"object patch {name}", False) for name in (getattr(model, "object_patches", None) or {})]
    found += [Patch(name.replace("_", " "), False) for name in PATCHER_ATTRIBUTES
              if holds_something(getattr(model, name, None))]
    return found


def check_patches(model) -> dict:
    """The transformer_options the DropletVideo Sampler runs the model with (the MODEL's, with the
    ModelPatcher's wrappers merged in); a ValueError naming every patch it cannot run."""
    refused = [patch.described() for patch in model_patches(model) if not patch.honoured]
    if refused:
        raise ValueError(f"the DropletVideo Sampler runs the reference's DDIM and guidance itself, so it cannot run "
                         f"these patches on its MODEL: {'; '.join(refused)}. Use core KSampler (or SamplerCustom) for "
                         f"them, with the same MODEL, conditioning and latent, or remove the patch nodes.")
    options = dict(model.model_options.get("transformer_options", {}))
    options["wrappers"] = all_wrappers(model)
    return options
