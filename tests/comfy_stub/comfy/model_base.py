"""Stand-in for comfy.model_base: ModelType and BaseModel as custom models use them (ComfyUI
0.33): the diffusion model built with the config's operations, extra_conds/concat_cond, the
latent format, apply_model through the model sampling's input and output scaling."""

import enum

import torch

import comfy.conds
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension


class ModelType(enum.Enum):
    EPS = 1
    V_PREDICTION = 2


def model_sampling(model_config, model_type):
    assert model_type == ModelType.V_PREDICTION, "the stand-in implements v-prediction only"

    class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    return ModelSampling(model_config)


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, model_type=ModelType.EPS, device=None, unet_model=None):
        super().__init__()
        unet_config = model_config.unet_config
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.current_patcher = None  # the ModelPatcher sampling it (ModelPatcher.pre_run)
        operations = comfy.ops.pick_operations(unet_config.get("dtype"), self.manual_cast_dtype)
        self.diffusion_model = unet_model(**unet_config, device=device, operations=operations)
        self.diffusion_model.eval()
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.memory_usage_factor = model_config.memory_usage_factor

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._apply_model, self, wrappers).execute(
            x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = None if c_crossattn is None else c_crossattn.to(xc.device, dtype)
        extra = {k: (v.to(xc.device, dtype) if hasattr(v, "dtype") and v.dtype not in (torch.int, torch.long)
                     else v.to(xc.device) if hasattr(v, "dtype") else v) for k, v in kwargs.items()}
        out = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options,
                                   **extra)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def get_dtype(self):
        return self.diffusion_model.dtype

    def concat_cond(self, **kwargs):
        return None

    def extra_conds(self, **kwargs):
        out = {}
        concat = self.concat_cond(**kwargs)
        if concat is not None:
            out["c_concat"] = comfy.conds.CONDNoiseShape(concat)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(cross_attn)
        return out

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def memory_required(self, input_shape, cond_shapes={}):
        return 0
