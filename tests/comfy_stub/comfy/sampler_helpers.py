"""Stand-in for comfy.sampler_helpers (ComfyUI 0.33): CONDITIONING to the samplers' cond dicts,
and the ModelPatcher's wrappers and callbacks put into the run's transformer_options. No hooks."""

import uuid

import comfy.patcher_extension


def convert_cond(cond: list) -> list:
    """Each [embeddings, options] entry as a dict: the options, cross_attn (the embeddings),
    model_conds (empty until the model's extra_conds fill it) and a uuid."""
    out = []
    for embeds, options in cond:
        entry = {**options, "model_conds": options.get("model_conds", {}), "uuid": uuid.uuid4()}
        if embeds is not None:
            entry["cross_attn"] = embeds
        out.append(entry)
    return out


def prepare_model_patcher(model, conds, model_options: dict) -> None:
    transformer_options = model_options["transformer_options"]
    comfy.patcher_extension.merge_nested_dicts(transformer_options.setdefault("wrappers", {}), model.wrappers,
                                               copy_dict1=False)
