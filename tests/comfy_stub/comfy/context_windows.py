"""Stand-in for comfy.context_windows (ComfyUI 0.33): the handler's settings, as its constructor
stores them. The pack reads `dim`, `context_length` and `causal_window_fix` (nodes/context_windows.py);
the windowed sampling itself lives in core samplers, which the stand-in does not have (the real
one is tested with COMFYUI_PATH)."""


class IndexListContextHandler:
    def __init__(self, context_schedule, fuse_method, context_length=1, context_overlap=0, context_stride=1,
                 closed_loop=False, dim=0, freenoise=False, cond_retain_index_list="", split_conds_to_windows=False,
                 latent_retain_index_list="", causal_window_fix=True):
        self.context_schedule, self.fuse_method = context_schedule, fuse_method
        self.context_length, self.context_overlap, self.context_stride = context_length, context_overlap, context_stride
        self.closed_loop, self.dim, self.freenoise = closed_loop, dim, freenoise
        self.cond_retain_index_list = [int(x.strip()) for x in cond_retain_index_list.split(",")] \
            if cond_retain_index_list else []
        self.split_conds_to_windows = split_conds_to_windows
        self.latent_retain_index_list = [int(x.strip()) for x in latent_retain_index_list.split(",")] \
            if latent_retain_index_list else []
        self.causal_window_fix = causal_window_fix
