"""The native MODEL called the way ComfyUI's core samplers call it, compared with the engine.

A k-diffusion sampler asks CFGGuider for the denoised latent at sigma: the CONDITIONING becomes
cond dicts (comfy.sampler_helpers.convert_cond), the model's extra_conds fill their model_conds
(comfy.samplers.encode_model_conds, as process_conds calls it: the FPS and the 17 concat
channels), the patcher's wrappers go into transformer_options (prepare_model_patcher), and
comfy.samplers.sampling_function runs calc_cond_batch: one BaseModel.apply_model call on the batch
[negative, positive], which scales the input by c_in = 1 / sqrt(sigma^2 + 1), maps sigma to its
timestep, calls the diffusion model and turns its v-prediction into x0. These tests call those
functions of the stand-in, or of a real ComfyUI with COMFYUI_PATH set.
"""

import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import pytest
import torch

from droplet_core.conditioning import i2v_video_and_mask, inpaint_latents
from droplet_core.positional import fps_tensor
from droplet_core.sampling import make_scheduler
from node_fixtures import as_image, conditioned, conds, engine, image_cond, loaded, start_image  # noqa: F401

SMALL = dict(width=64, height=64, frames=5)  # 2 latent frames of 8 x 8
LATENT_SIZE = (2, 8, 8)
FPS, CFG, TIMESTEP = 8, 6.0, 499
# fp32 on the CPU. The engine's x0 (from its own scheduler's alpha-bar) against ComfyUI's (input
# scaled by c_in from ComfyUI's float32 sigma table, v turned into x0 by c_skip/c_out): measured
# max |diff| 2.4e-6 (x0 up to 2.4 in size) on the stand-in, ComfyUI 0.33 and 0.8.0 alike.
ATOL = 1e-5


@pytest.fixture(scope="module")
def i2v(pack, conds, loaded, start_image):
    """(positive, negative, LATENT) of DropletVideo Image Encode at SMALL."""
    return conditioned(pack, conds, image_cond(pack, loaded[1], start=as_image(start_image), **SMALL), fps=FPS)


@pytest.fixture(scope="module")
def noisy():
    """x_t, the scheduler's noisy latent in the engine's layout [1, F, 16, h, w]."""
    return torch.randn(1, LATENT_SIZE[0], 16, *LATENT_SIZE[1:], generator=torch.Generator().manual_seed(3))


def comfy_denoised(model, positive, negative, x, sigma, cfg=CFG) -> torch.Tensor:
    """What CFGGuider.predict_noise returns to a core sampler for x [1, 16, F, h, w] at sigma."""
    base = model.model
    model_options = comfy.model_patcher.create_model_options_clone(model.model_options)
    conds = {"positive": comfy.sampler_helpers.convert_cond(positive),
             "negative": comfy.sampler_helpers.convert_cond(negative)}
    comfy.sampler_helpers.prepare_model_patcher(model, conds, model_options)
    for kind in conds:
        conds[kind] = comfy.samplers.encode_model_conds(base.extra_conds, conds[kind], x, x.device, kind,
                                                        latent_image=torch.zeros_like(x), denoise_mask=None, seed=0)
    model.pre_run()
    try:
        with torch.no_grad():
            return comfy.samplers.sampling_function(base, x, sigma, conds["negative"], conds["positive"], cfg,
                                                    model_options=model_options, seed=0)
    finally:
        model.cleanup()


def engine_x0(engine, positive, negative, x_t, start_image) -> torch.Tensor:
    """The engine's CFG prediction at TIMESTEP, as x0 in ComfyUI's layout [1, 16, F, h, w]: its
    transformer on the batch [negative, positive] with the inpaint channels it builds itself."""
    transformer = engine.transformer
    video, mask = i2v_video_and_mask(SMALL["frames"], SMALL["width"], SMALL["height"], start_image)
    inpaint = inpaint_latents(engine.vae, video, mask, LATENT_SIZE, torch.float32, None, None, False)
    text = torch.cat([negative[0][0], positive[0][0]])
    t = torch.tensor([TIMESTEP, TIMESTEP])
    with torch.no_grad():
        v = transformer(torch.cat([x_t] * 2), text, t, fps_tensor(FPS), inpaint_latents=torch.cat([inpaint] * 2),
                        image_rotary_emb=transformer.rotary(*LATENT_SIZE)).float()
    uncond, cond = v.chunk(2)
    v = uncond + CFG * (cond - uncond)
    alpha_bar = make_scheduler(engine.scheduler_config, "ddim").alphas_cumprod[TIMESTEP]
    return (alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v).movedim(1, 2)


def comfy_input(model, x_t):
    """(x, sigma): the engine's x_t at TIMESTEP in ComfyUI's sigma space (x = x_t / c_in)."""
    sigma = model.model.model_sampling.sigma(torch.tensor([float(TIMESTEP)]))
    return x_t.movedim(1, 2) * (sigma ** 2 + 1).sqrt(), sigma


def test_apply_model_through_core_sampling_equals_the_engine(loaded, engine, i2v, noisy, start_image):
    positive, negative, latent = i2v
    assert latent["samples"].shape[2:] == LATENT_SIZE
    x, sigma = comfy_input(loaded[0], noisy)
    ours = comfy_denoised(loaded[0], positive, negative, x, sigma)
    expected = engine_x0(engine, positive, negative, noisy, start_image)

    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


def test_one_apply_model_call_on_the_batch_negative_positive(loaded, i2v, noisy):
    """CFG runs as one batch of two, the negative first (the engine's order), every extra
    condition batched with it; the diffusion-model wrapper is entered once for that call."""
    positive, negative, _ = i2v
    calls = []

    def record_apply_model(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        calls.append(("apply_model", x.shape[0], transformer_options["cond_or_uncond"], c_concat.shape[:2],
                      c_crossattn.shape[0], kwargs["fps"].shape[0]))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def record_diffusion_model(executor, *args, **kwargs):
        calls.append(("diffusion_model", args[0].shape[0]))
        return executor(*args, **kwargs)

    model = loaded[0].clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test", record_apply_model)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", record_diffusion_model)
    x, sigma = comfy_input(model, noisy)
    wrapped = comfy_denoised(model, positive, negative, x, sigma)
    # comfy.samplers' cond_or_uncond: 1 is the negative (uncond), 0 the positive.
    assert calls == [("apply_model", 2, [1, 0], (2, 17), 2, 2), ("diffusion_model", 2)]
    calls.clear()
    comfy_denoised(model, positive, negative, x, sigma, cfg=1.0)  # cfg 1: ComfyUI skips the negative
    assert calls == [("apply_model", 1, [0], (1, 17), 1, 1), ("diffusion_model", 1)]
    torch.testing.assert_close(wrapped, comfy_denoised(loaded[0], positive, negative, x, sigma), atol=0, rtol=0)


def test_identity_dit_block_patches_change_nothing(loaded, i2v, noisy):
    """A patches_replace["dit"][("double_block", i)] patch on every block (SkipLayerGuidanceDiT's
    key) that calls original_block: each runs once per model call, and the result is the same."""
    positive, negative, _ = i2v
    blocks = loaded[0].model.diffusion_model.config.num_layers
    entered = []

    def identity(index):
        def patch(args, extra):
            assert {"img", "txt", "vec", "pe", "transformer_options"} <= args.keys()
            entered.append(index)
            return extra["original_block"](args)
        return patch

    patched = loaded[0].clone()
    for index in range(blocks):
        patched.set_model_patch_replace(identity(index), "dit", "double_block", index)
    x, sigma = comfy_input(patched, noisy)
    ours = comfy_denoised(patched, positive, negative, x, sigma)
    assert entered == list(range(blocks))
    assert "patches_replace" not in loaded[0].model_options["transformer_options"]  # the clone's own
    torch.testing.assert_close(ours, comfy_denoised(loaded[0], positive, negative, x, sigma), atol=0, rtol=0)
