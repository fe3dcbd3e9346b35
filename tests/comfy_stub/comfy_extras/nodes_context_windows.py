"""Stand-in for comfy_extras/nodes_context_windows.py (ComfyUI 0.33): what Context Windows (Manual)
does to the MODEL. It clones it and sets model_options["context_handler"]; the real node also adds a
prepare-sampling wrapper that sizes the memory estimate to one window (no sampler here to use it)."""

import comfy.context_windows


class NodeOutput:
    def __init__(self, *args):
        self.args = args


class ContextWindowsManualNode:
    @classmethod
    def execute(cls, model, context_length, context_overlap, context_schedule, context_stride, closed_loop,
                fuse_method, dim, freenoise, cond_retain_index_list="", split_conds_to_windows=False,
                latent_retain_index_list="", causal_window_fix=True):
        model = model.clone()
        model.model_options["context_handler"] = comfy.context_windows.IndexListContextHandler(
            context_schedule=context_schedule, fuse_method=fuse_method, context_length=context_length,
            context_overlap=context_overlap, context_stride=context_stride, closed_loop=closed_loop, dim=dim,
            freenoise=freenoise, cond_retain_index_list=cond_retain_index_list,
            split_conds_to_windows=split_conds_to_windows, latent_retain_index_list=latent_retain_index_list,
            causal_window_fix=causal_window_fix)
        return NodeOutput(model)
