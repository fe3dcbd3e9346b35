"""Stand-in for comfy.model_management: devices, the loaded-model list, interrupts.

One device (CPU, or COMFY_STUB_DEVICE) and no memory accounting: load_models_gpu keeps
ComfyUI's bookkeeping (current_loaded_models, newest first) and its clone handling: loading a
patcher first takes every clone of the same module out of the list (detached, weights left as
they are), then loads it; ModelPatcher.partially_load re-patches the weights when they carry
another clone's patches and does nothing when they are this patcher's already.
"""

import os
import threading

import torch


class InterruptProcessingException(BaseException):
    pass


def get_torch_device():
    return torch.device(os.environ.get("COMFY_STUB_DEVICE", "cpu"))


def unet_offload_device():
    return torch.device("cpu")


def vae_device():
    return get_torch_device()


def vae_offload_device():
    return torch.device("cpu")


def text_encoder_device():
    return get_torch_device()


def text_encoder_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def is_device_cpu(device):
    return torch.device(device).type == "cpu"


def dtype_size(dtype):
    return torch.empty((), dtype=dtype).element_size()


def get_total_memory(dev=None):
    dev = torch.device(dev or get_torch_device())
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def extra_reserved_memory():
    return 400 * 1024 * 1024  # ComfyUI's default on Linux


def soft_empty_cache(force=False):
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def module_size(module):
    return sum(t.nbytes for t in module.state_dict().values())


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device
        self.currently_used = True

    def model_memory(self):
        return self.model.model_size()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.model_patches_to(self.device)
        self.model.partially_load(self.device, 1e32, force_patch_weights=force_patch_weights)
        return self.model.model

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        return True

    def __eq__(self, other):
        return self.model is other.model


current_loaded_models: list = []


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    models_to_load = []
    for model in dict.fromkeys(models):
        loaded = LoadedModel(model)
        if loaded in current_loaded_models:
            loaded = current_loaded_models[current_loaded_models.index(loaded)]
            loaded.currently_used = True
        models_to_load.append(loaded)
    for loaded in models_to_load:
        for other in [m for m in current_loaded_models if loaded.model.is_clone(m.model)]:
            current_loaded_models.remove(other)
            other.model.detach(unpatch_all=False)
    for loaded in models_to_load:
        loaded.model_load(0, force_patch_weights=force_patch_weights)
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def loaded_models(only_currently_used=False):
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def free_memory(memory_required, device, keep_loaded=[]):
    unloaded = []
    for loaded in list(current_loaded_models):
        if loaded.device == device and loaded not in keep_loaded:
            loaded.model_unload()
            current_loaded_models.remove(loaded)
            unloaded.append(loaded)
    return unloaded


def unload_all_models():
    free_memory(1e30, get_torch_device())


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
