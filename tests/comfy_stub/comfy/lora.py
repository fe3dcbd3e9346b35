"""Stand-in for comfy.lora: the generic LoRA key map, load_lora, and calculate_weight, which
applies a key's patch list to a weight.

Each patch is (strength, value, strength_model, offset, function) as ModelPatcher.add_patches
stores it; value is a weight_adapter object (ComfyUI 2025+) or a legacy tuple: ("lora", (up,
down, alpha, mid, dora_scale, reshape)), ("diff", (diff,)) or (diff,). Same arithmetic and order as ComfyUI.
"""

import logging

import torch

from . import weight_adapter


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
    for strength, v, strength_model, offset, function in patches:
        if function is None:
            function = lambda a: a  # noqa: E731
        if offset is not None:
            raise NotImplementedError(f"{key}: the ComfyUI stand-in has no offset patches")
        if strength_model != 1.0:
            weight *= strength_model
        if isinstance(v, weight_adapter.WeightAdapterBase):
            weight = v.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype,
                                        original_weights)
            continue
        if len(v) == 1:
            if strength != 0.0:
                weight += function(strength * v[0].to(weight.device, weight.dtype))
        elif v[0] == "diff":
            if v[1][0].shape != weight.shape:
                logging.warning("WARNING SHAPE MISMATCH %s WEIGHT NOT MERGED %s != %s", key, v[1][0].shape,
                                weight.shape)
            elif strength != 0.0:
                weight += function(strength * v[1][0].to(weight.device, weight.dtype))
        elif v[0] == "lora":  # ComfyUI before weight_adapter: the same arithmetic inline
            weight = weight_adapter.LoRAAdapter(set(), v[1]).calculate_weight(
                weight, key, strength, strength_model, offset, function, intermediate_dtype)
        else:
            logging.warning("patch type not recognized %s %s", v[0], key)
    return weight


def model_lora_keys_unet(model, key_map={}):
    """ComfyUI's generic map for a model it has no special case for: kohya lora_unet_<a_b_c> and
    diffusion_model.<a.b.c> names of every diffusion_model weight."""
    for k in model.state_dict().keys():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map["lora_unet_{}".format(k[len("diffusion_model."):-len(".weight")].replace(".", "_"))] = k
            key_map[k[:-len(".weight")]] = k
    return key_map


def load_lora(lora, to_load, log_missing=True):
    """{model key: adapter} for the layers of `to_load` (LoRA key -> model key) found in `lora`."""
    patch_dict, loaded_keys = {}, set()
    for x in to_load:
        alpha_name = f"{x}.alpha"
        alpha = lora[alpha_name].item() if alpha_name in lora else None
        if alpha is not None:
            loaded_keys.add(alpha_name)
        for adapter_cls in weight_adapter.adapters:
            adapter = adapter_cls.load(x, lora, alpha, None, loaded_keys)
            if adapter is not None:
                patch_dict[to_load[x]] = adapter
                loaded_keys.update(adapter.loaded_keys)
        for suffix, target in ((".diff", to_load[x]), (".diff_b", f"{to_load[x][:-len('.weight')]}.bias")):
            if f"{x}{suffix}" in lora:  # what core Train LoRA saves for 1-D weights and for biases
                patch_dict[target] = ("diff", (lora[f"{x}{suffix}"],))
                loaded_keys.add(f"{x}{suffix}")
    if log_missing:
        for x in lora:
            if x not in loaded_keys:
                logging.warning("lora key not loaded: %s", x)
    return patch_dict
