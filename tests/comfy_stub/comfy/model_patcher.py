"""Stand-in for comfy.model_patcher.ModelPatcher: holds a module, its weight patches (LoRA),
and moves it between devices.

As in ComfyUI: clones share the module and the weight backups but copy the patch lists;
add_patches stores (strength, value, strength_model, offset, function) per state-dict key and
gives the clone a new patches_uuid; loading writes patched weights (computed in float32 by
comfy.lora.calculate_weight) as new Parameters after backing up the originals, and
unpatch_model puts the originals back. partially_load re-patches when the module carries
another clone's patches (model.current_weight_patches_uuid). load(lowvram_model_memory=N)
is ComfyUI's partial (lowvram) path: layers beyond N bytes keep their weights on the offload
device and cast them per call. Wrappers and object patches are held (add_wrapper_with_key,
add_object_patch) and cloned as ComfyUI does; set_model_optimized_attention stores the attention
override as ComfyUI 0.33 does; object patches are not applied on load. No hooks. Like
ComfyUI's, it writes `model.device`, so wrapping a module whose `device` is a read-only property fails here too.
"""

import collections
import uuid

import torch

import comfy.lora
import comfy.model_management
import comfy.patcher_extension
import comfy.utils

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def create_model_options_clone(orig_model_options: dict) -> dict:
    return comfy.patcher_extension.copy_nested_dicts(orig_model_options)


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    """model_options with transformer_options["patches_replace"][name][(block_name, number)] = patch,
    the dicts on the way copied (clones keep their own)."""
    options = model_options["transformer_options"].copy()
    options["patches_replace"] = options.get("patches_replace", {}).copy()
    options["patches_replace"][name] = options["patches_replace"].get(name, {}).copy()
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    options["patches_replace"][name][block] = patch
    model_options["transformer_options"] = options
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device
        self.patches = {}
        self.backup = {}
        self.model_options = {"transformer_options": {}}
        self.wrappers, self.object_patches = {}, {}
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        self.cached_patcher_init = None  # (factory, args): how clone(force_deepcopy) and MultiGPU CFG Split rebuild it
        for name, default in (("model_loaded_weight_memory", 0), ("current_weight_patches_uuid", None),
                              ("model_lowvram", False)):
            if not hasattr(self.model, name):
                setattr(self.model, name, default)

    def is_dynamic(self):
        return False

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def clone(self, disable_dynamic=False, model_override=None, force_deepcopy=False):
        """As ComfyUI 0.33: force_deepcopy (Train LoRA) and disable_dynamic on a dynamic patcher (never,
        here) rebuild the model through cached_patcher_init, passing disable_dynamic=True."""
        model, backup = self.model, self.backup  # shared: the weights are the module's, whichever clone patched them
        if force_deepcopy and model_override is None:
            if self.cached_patcher_init is None:
                raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
            model, backup = self.cached_patcher_init[0](*self.cached_patcher_init[1], disable_dynamic=True).model, {}
        n = self.__class__(model, self.load_device, self.offload_device, self.model_size(),
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.model_options = {k: (v.copy() if isinstance(v, dict) else v) for k, v in self.model_options.items()}
        n.wrappers = comfy.patcher_extension.copy_nested_dicts(self.wrappers)
        n.object_patches = dict(self.object_patches)
        n.backup = backup
        n.cached_patcher_init = self.cached_patcher_init
        n.parent = self
        return n

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def set_model_optimized_attention(self, optimized_attention):
        def optimized_attention_override(_, *args, **kwargs):
            return optimized_attention(*args, **kwargs)

        self.model_options["transformer_options"]["optimized_attention_override"] = optimized_attention_override

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number,
                                                             transformer_index)

    def pre_run(self):
        self.model.current_patcher = self

    def cleanup(self):
        self.model.current_patcher = None

    def model_patches_models(self):
        return []

    def model_patches_to(self, device):
        pass

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        added = set()
        model_sd = self.model.state_dict()
        for k in patches:
            key, offset, function = k, None, None
            if not isinstance(k, str):
                key, offset, function = k[0], k[1], (k[2] if len(k) > 2 else None)
            if key in model_sd:
                added.add(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return list(added)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        weight = comfy.utils.get_attr(self.model, key)
        inplace_update = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = Backup(weight.to(device=self.offload_device, copy=inplace_update), inplace_update)
        temp_weight = weight.to(device_to if device_to is not None else weight.device, torch.float32, copy=True)
        out_weight = comfy.lora.calculate_weight(self.patches[key], temp_weight, key).to(weight.dtype)
        if inplace_update:
            comfy.utils.copy_to_param(self.model, key, out_weight)
        else:
            comfy.utils.set_attr_param(self.model, key, out_weight)

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        for key in self.model.state_dict():
            self.patch_weight_to_device(key, device_to=device_to)
        if 0 < lowvram_model_memory < self.model_size() and not full_load:
            self._load_partially(device_to, lowvram_model_memory)
        else:
            if device_to is not None:
                self.model.to(device_to)
                self.model.device = device_to
            self.model.model_loaded_weight_memory = self.model_size()
        self.model.current_weight_patches_uuid = self.patches_uuid

    def _load_partially(self, device_to, budget):
        """ComfyUI's lowvram path: layers with comfy_cast_weights move to the device while they fit
        in the budget; the rest keep their weights on the offload device and cast them per call."""
        loaded = 0
        for _, module in self.model.named_modules():
            if not hasattr(module, "comfy_cast_weights"):
                continue
            size = comfy.model_management.module_size(module)
            if loaded + size <= budget:
                module.to(device_to)
                loaded += size
            else:
                module.prev_comfy_cast_weights = module.comfy_cast_weights
                module.comfy_cast_weights = True
        self.model.model_lowvram = True
        self.model.model_loaded_weight_memory = loaded

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if load_weights:
            self.load(device_to, lowvram_model_memory, force_patch_weights, full_load=lowvram_model_memory == 0)
        return self.model

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        """What LoadedModel.model_load calls: re-patches when another clone's patches are in."""
        current = self.model.current_weight_patches_uuid
        unpatch_weights = current is not None and (current != self.patches_uuid or force_patch_weights)
        used = self.model.model_loaded_weight_memory
        self.unpatch_model(self.offload_device, unpatch_weights=unpatch_weights)
        if self.model.model_loaded_weight_memory > 0:
            return 0
        self.load(device_to, full_load=True)
        return self.model.model_loaded_weight_memory - (0 if unpatch_weights else used)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if not unpatch_weights:
            return 0
        for key, backup in self.backup.items():
            if backup.inplace_update:
                comfy.utils.copy_to_param(self.model, key, backup.weight)
            else:
                comfy.utils.set_attr_param(self.model, key, backup.weight)
        self.backup.clear()
        self.model.current_weight_patches_uuid = None
        if self.model.model_lowvram:
            for _, module in self.model.named_modules():
                if hasattr(module, "prev_comfy_cast_weights"):
                    module.comfy_cast_weights = module.prev_comfy_cast_weights
                    del module.prev_comfy_cast_weights
            self.model.model_lowvram = False
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = 0
        return 0

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model
