"""Stand-in for comfy.patcher_extension: wrapper lookup, the executors and the nested-dict merge
that puts a ModelPatcher's wrappers into the sampler's transformer_options (ComfyUI 0.33)."""


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    CALC_COND_BATCH = "calc_cond_batch"
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
    def new_executor(cls, original, wrappers, idx=0):
        return cls(original, None, list(wrappers), idx)

    @classmethod
    def new_class_executor(cls, original, class_obj, wrappers, idx=0):
        return cls(original, class_obj, list(wrappers), idx)

    def __call__(self, *args, **kwargs):
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        if self.idx < len(self.wrappers):
            return self.wrappers[self.idx](self, *args, **kwargs)
        return self.original(*args, **kwargs)


def add_wrapper_with_key(wrapper_type: str, key: str, wrapper, transformer_options: dict, is_model_options=False):
    if is_model_options:
        transformer_options = transformer_options.setdefault("transformer_options", {})
    transformer_options.setdefault("wrappers", {}).setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


def copy_nested_dicts(source: dict) -> dict:
    """Dicts and lists copied at every level; other values shared."""
    return {key: copy_nested_dicts(value) if isinstance(value, dict) else value.copy() if isinstance(value, list)
            else value for key, value in source.items()}


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1=True) -> dict:
    """dict2 into dict1 (a copy of it unless copy_dict1 is False): dicts merge, lists extend, the rest is set."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(merged.setdefault(key, {}), value)
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged
