"""Stand-in for comfy.patcher_extension: wrapper lookup and the class executor (ComfyUI 0.33)."""


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.get("transformer_options", {})
    wrappers = []
    for by_key in transformer_options.get("wrappers", {}).get(wrapper_type, {}).values():
        wrappers.extend(by_key)
    return wrappers


class WrapperExecutor:
    """Calls the wrappers outermost first; each gets this executor for the next one."""

    def __init__(self, original, class_obj, wrappers, idx=0):
        self.original, self.class_obj, self.wrappers, self.idx = original, class_obj, wrappers, idx

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, list(wrappers), idx)

    def __call__(self, *args, **kwargs):
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.idx < len(self.wrappers):
            return self.wrappers[self.idx](self, *args, **kwargs)
        return self.original(*args, **kwargs)
