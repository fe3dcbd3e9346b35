"""Stand-in for the part of comfy.samplers (ComfyUI 0.33) between a k-diffusion sampler and
BaseModel.apply_model: the model's extra conditions encoded into each cond (encode_model_conds, as
process_conds calls it), the conds run as one batch ([uncond, cond] when they fit together,
calc_cond_batch) with the sampler's transformer_options, and the CFG mix (sampling_function).
No areas, masks, hooks, ControlNets or context windows: every cond covers the whole latent."""

import math

import torch

import comfy.patcher_extension


def encode_model_conds(model_function, conds, noise, device, prompt_type, **kwargs):
    """Each cond's model_conds extended with model_function(**cond, noise, device, ...) (extra_conds)."""
    encoded = []
    for cond in conds:
        params = {**cond, "device": device, "noise": noise, "prompt_type": cond.get("prompt_type", prompt_type)}
        params["width"] = params.get("width", noise.shape[3] * 8 if noise.ndim >= 4 else None)
        params["height"] = params.get("height", noise.shape[2] * 8)
        params.update({k: v for k, v in kwargs.items() if k not in params})
        encoded.append({**cond, "model_conds": {**cond["model_conds"], **model_function(**params)}})
    return encoded


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
                                                        model_options, is_model_options=True)
    return comfy.patcher_extension.WrapperExecutor.new_executor(_calc_cond_batch, wrappers).execute(
        model, conds, x_in, timestep, model_options)


def _concatenable(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].can_concat(b[k]) for k in a)


def _calc_cond_batch(model, conds, x_in, timestep, model_options):
    """One prediction per entry of `conds` (None: skipped, zeros). Conds whose model_conds can be
    concatenated run in one apply_model call, in reversed order (so [cond, uncond] runs as
    [uncond, cond]); transformer_options carry cond_or_uncond, uuids and sigmas, as core's."""
    outputs = [torch.zeros_like(x_in) for _ in conds]
    to_run = [(entry, index) for index, cond in enumerate(conds) if cond is not None for entry in cond]
    while to_run:
        first = to_run[0][0]["model_conds"]
        together = [i for i, (entry, _) in enumerate(to_run) if _concatenable(entry["model_conds"], first)]
        batch = [to_run[i] for i in reversed(together)]
        to_run = [item for i, item in enumerate(to_run) if i not in together]
        kinds = [index for _, index in batch]
        c = {}
        for key in first:
            processed = [entry["model_conds"][key].process_cond(batch_size=x_in.shape[0]) for entry, _ in batch]
            c[key] = processed[0].concat(processed[1:])
        options = comfy.patcher_extension.merge_nested_dicts({}, model_options.get("transformer_options", {}))
        options.update(cond_or_uncond=kinds, uuids=[entry["uuid"] for entry, _ in batch], sigmas=timestep)
        c["transformer_options"] = options
        x, t = torch.cat([x_in] * len(batch)), torch.cat([timestep] * len(batch))
        if "model_function_wrapper" in model_options:
            out = model_options["model_function_wrapper"](model.apply_model, {"input": x, "timestep": t, "c": c,
                                                                              "cond_or_uncond": kinds})
        else:
            out = model.apply_model(x, t, **c)
        for index, chunk in zip(kinds, out.chunk(len(batch))):
            outputs[index] += chunk
    return [out / max(1, len(cond or ())) for out, cond in zip(outputs, conds)]


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        result = x - model_options["sampler_cfg_function"](args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for function in model_options.get("sampler_post_cfg_function", []):
        result = function({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale,
                           "model": model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                           "sigma": timestep, "model_options": model_options, "input": x})
    return result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
    """The denoised latent core samplers step with: cond and uncond predictions (uncond skipped at
    cfg 1), mixed by cfg_function."""
    skip_uncond = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    conds = [cond, None if skip_uncond else uncond]
    out = calc_cond_batch(model, conds, x, timestep, model_options)
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=conds[1])
