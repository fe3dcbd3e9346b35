"""Stand-in for comfy.model_sampling: discrete v-prediction sampling (ComfyUI 0.33's formulas:
linear betas on sqrt, optional zero-terminal-SNR rescale, sigma <-> timestep by log-sigma)."""

import torch


def rescale_zero_terminal_snr_sigmas(sigmas):
    alphas_bar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def reshape_sigma(sigma, ndim):
    return sigma.view(()) if sigma.nelement() == 1 else sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class V_PREDICTION:
    def calculate_input(self, sigma, noise):
        return noise / (reshape_sigma(sigma, noise.ndim) ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return (model_input * self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
                - model_output * sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5)


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, model_config=None):
        super().__init__()
        settings = model_config.sampling_settings if model_config is not None else {}
        start, end = settings.get("linear_start", 0.00085), settings.get("linear_end", 0.012)
        schedule, steps = settings.get("beta_schedule", "linear"), settings.get("timesteps", 1000)
        if schedule == "linear":  # ComfyUI's "linear" spaces the square roots (diffusers' scaled_linear)
            betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
        elif schedule == "sqrt_linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float64)
        else:
            raise NotImplementedError(f"the ComfyUI stand-in has no {schedule!r} beta schedule")
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if settings.get("zsnr", False):
            sigmas = rescale_zero_terminal_snr_sigmas(sigmas)
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())
        self.sigma_data = 1.0

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)
