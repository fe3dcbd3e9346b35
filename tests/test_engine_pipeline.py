"""The sampler with a fake model, determinism, modes, the CLI, and ComfyUI-free imports."""

import inspect
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, UniPCMultistepScheduler)

from droplet_core.pipeline import Request, load_pipeline
from droplet_core.sample_plan import initial_noise
from droplet_core.sampling import (SCHEDULERS, denoising_loop, dynamic_guidance, make_scheduler, start_latents,
                                   timesteps_for)
from droplet_core.tiny import SCHEDULER
from engine_fixtures import end_image, start_image, tiny_ckpt  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(width=128, height=128, frames=5, steps=2)


class FakeModel(torch.nn.Module):
    """Predicts a known function of its inputs and records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def rotary(self, *args):
        return None

    def forward(self, x, text, timestep, fps, inpaint_latents=None, image_rotary_emb=None, block_runner=None):
        self.calls.append((x.shape[0], text[:, 0, 0].tolist(), fps.tolist()))
        return x * 0 + text[:, :1, :1, None, None]  # negative rows predict their text value


def run_fake(guidance, steps=4, on_step=None, use_dynamic_cfg=False):
    model, scheduler = FakeModel(), make_scheduler(SCHEDULER)
    timesteps = timesteps_for(scheduler, steps)
    negative, positive = torch.full((1, 3, 4), -1.0), torch.full((1, 3, 4), 2.0)
    latents = torch.zeros(1, 2, 16, 4, 4)
    out = denoising_loop(model, scheduler, latents, timesteps, positive=positive, negative=negative, inpaint=None,
                         fps=torch.tensor([8]), guidance_scale=guidance, use_dynamic_cfg=use_dynamic_cfg,
                         on_step=on_step)
    return model, out


def test_sampler_batches_negative_then_positive_and_counts_steps():
    seen = []
    model, _ = run_fake(6.0, steps=4, on_step=lambda i, n, x: seen.append((i, n)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert [c[0] for c in model.calls] == [2] * 4
    assert model.calls[0][1] == [-1.0, 2.0] and model.calls[0][2] == [8]


def test_cfg_arithmetic_and_guidance_one_skips_the_negative():
    model_one, out_one = run_fake(1.0, steps=1)
    assert [c[0] for c in model_one.calls] == [1]
    _, out_cfg = run_fake(3.0, steps=1)
    # uncond -1, cond 2, g 3: -1 + 3 * 3 = 8 -> same scheduler step as a plain prediction of 8.
    scheduler = make_scheduler(SCHEDULER)
    t = timesteps_for(scheduler, 1)[0]
    expected = scheduler.step(torch.full((1, 2, 16, 4, 4), 8.0), t, torch.zeros(1, 2, 16, 4, 4), eta=0.0).prev_sample
    torch.testing.assert_close(out_cfg, expected)
    assert not torch.equal(out_one, out_cfg)


def test_on_step_can_abort():
    class Interrupted(Exception):
        pass

    def stop_at_two(i, n, x):
        if i == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_fake(6.0, steps=5, on_step=stop_at_two)


def reference_dynamic_guidance(scale, steps, t):
    """CogVideoX's pipeline line as DropletVideo's inference.py runs it: `t` is the timestep value."""
    return 1 + scale * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


def test_dynamic_cfg_uses_the_timestep_value_as_the_reference():
    assert dynamic_guidance(6.0, 50, 50) == 1.0
    for t in (999, 979, 500, 1):
        assert dynamic_guidance(6.0, 50, t) == reference_dynamic_guidance(6.0, 50, t)
    # Through the loop: each step's guidance from its timestep (999, 749, ...), not its index (0, 1, ...).
    steps, scale = 4, 6.0
    scheduler = make_scheduler(SCHEDULER)
    expected = torch.zeros(1, 2, 16, 4, 4)
    for t in timesteps_for(scheduler, steps):
        guidance = reference_dynamic_guidance(scale, steps, t.item())
        prediction = torch.full_like(expected, -1 + guidance * (2 - -1))  # the fake's uncond -1, cond 2
        expected = scheduler.step(prediction, t, expected, eta=0.0).prev_sample
    _, out = run_fake(scale, steps, use_dynamic_cfg=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out, run_fake(scale, steps)[1])


def test_strength_cuts_the_schedule():
    scheduler = make_scheduler(SCHEDULER)
    assert len(timesteps_for(scheduler, 10, 1.0)) == 10
    assert len(timesteps_for(scheduler, 10, 0.6)) == 6
    assert len(timesteps_for(scheduler, 10, 0.0)) == 0
    with pytest.raises(ValueError, match="within 0..1"):
        timesteps_for(scheduler, 10, 1.5)


def test_quirk8_initial_noise_is_the_seeded_generator():
    expected = torch.randn((1, 2, 16, 4, 4), generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(initial_noise((1, 2, 16, 4, 4), 42, "cpu", torch.float32), expected)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return load_pipeline(tiny_ckpt)


def test_same_seed_same_video_other_seed_or_fps_other_video(pipe, start_image):
    base = dict(prompt="a panda", image=start_image, fps=8, seed=1, **SMALL)
    first = pipe.generate(Request(**base)).frames
    assert torch.equal(first, pipe.generate(Request(**base)).frames)
    assert (first - pipe.generate(Request(**{**base, "seed": 2})).frames).abs().max() > 1e-3
    assert (first - pipe.generate(Request(**{**base, "fps": 32})).frames).abs().max() > 1e-3
    assert (first - pipe.generate(Request(**{**base, "prompt": "a car"})).frames).abs().max() > 1e-3


def test_end_image_reaches_the_model_and_changes_the_video(pipe, start_image, end_image):
    """The reference's behaviour with an end image is pinned by the i2v_end_image golden; here: the
    end image is not dropped on the way (the random tiny model does not draw it, so no likeness test)."""
    base = dict(prompt="a panda", image=start_image, fps=8, seed=3, width=128, height=128, frames=9, steps=3)
    without = pipe.generate(Request(**base)).frames
    with_end = pipe.generate(Request(**base, end_image=end_image)).frames
    assert (with_end - without).abs().max() > 1e-3


def test_v2v_strength_zero_returns_the_input(pipe):
    from droplet_core.vae_ops import decode_to_frames, encode_sample

    video = torch.rand(5, 128, 128, 3)
    result = pipe.generate(Request(prompt="x", video=video, strength=0.0, seed=4, **{**SMALL, "steps": 4}))
    pixels = (video.permute(3, 0, 1, 2)[None] * 2 - 1)
    latents = encode_sample(pipe.vae, pixels, torch.Generator().manual_seed(4)) * pipe.vae.config.scaling_factor
    expected = decode_to_frames(pipe.vae, latents.permute(0, 2, 1, 3, 4))[0].permute(1, 2, 3, 0)
    torch.testing.assert_close(result.frames, expected)


# What each scheduler name must be, written out here, independently of sampling.SCHEDULERS.
DIFFUSERS_SCHEDULERS = {
    "ddim": (DDIMScheduler, {}), "cogvideox_ddim": (CogVideoXDDIMScheduler, {}),
    "cogvideox_dpm": (CogVideoXDPMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}), "unipc": (UniPCMultistepScheduler, {})}


class LatentModel(FakeModel):
    """A prediction that depends on the latents and the timestep, as a real model's does."""

    def forward(self, x, text, timestep, fps, inpaint_latents=None, image_rotary_emb=None, block_runner=None):
        return 0.3 * x + text[:, :1, :1, None, None] + timestep.float()[:, None, None, None, None] / 1000


def diffusers_loop(name, noise, text, steps, guidance):
    """diffusers' CogVideoX pipeline loop, with the scheduler built here from the release config."""
    cls, extra = DIFFUSERS_SCHEDULERS[name]
    scheduler = cls.from_config(SCHEDULER, **extra)
    scheduler.set_timesteps(steps)
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {k: v for k, v in {"eta": 0.0, "generator": torch.Generator().manual_seed(0)}.items() if k in accepted}
    latents, old_pred_original, model = noise * scheduler.init_noise_sigma, None, LatentModel()
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, cond = model(model_input, text, t.expand(2), None).chunk(2)
        prediction = uncond + guidance * (cond - uncond)
        if isinstance(scheduler, CogVideoXDPMScheduler):
            latents, old_pred_original = scheduler.step(prediction, old_pred_original, t,
                                                        scheduler.timesteps[i - 1] if i > 0 else None, latents,
                                                        **kwargs, return_dict=False)
        else:
            latents = scheduler.step(prediction, t, latents, **kwargs, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_equals_diffusers_loop_on_the_release_config(name):
    scheduler = make_scheduler(SCHEDULER, name)
    assert type(scheduler) is DIFFUSERS_SCHEDULERS[name][0]
    # The release config is used: v-prediction, zero terminal SNR, trailing spacing (starts at 999, not 750).
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert scheduler.alphas_cumprod[-1] < 1e-6
    timesteps = timesteps_for(scheduler, 4)
    assert timesteps[0].item() == 999 and len(timesteps) == 4 * scheduler.order
    noise = torch.randn(1, 2, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    negative, positive = torch.full((1, 3, 4), -1.0), torch.full((1, 3, 4), 2.0)
    ours = denoising_loop(LatentModel(), scheduler, start_latents(scheduler, timesteps, noise), timesteps,
                          positive=positive, negative=negative, inpaint=None, fps=torch.tensor([8]),
                          guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    expected = diffusers_loop(name, noise, torch.cat([negative, positive]), 4, 3.0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_every_scheduler_runs_deterministically_and_each_gives_its_own_video(pipe, start_image):
    # 3 steps: with 2, cogvideox_dpm's first and last steps are both its first-order (DDIM) step.
    requests = {name: Request(prompt="a panda", image=start_image, scheduler=name, seed=5, **{**SMALL, "steps": 3})
                for name in sorted(SCHEDULERS)}
    videos = {name: pipe.generate(request).frames for name, request in requests.items()}
    assert all(torch.isfinite(video).all() for video in videos.values())
    assert torch.equal(videos["cogvideox_dpm"], pipe.generate(requests["cogvideox_dpm"]).frames)  # draws noise
    names = sorted(videos)
    for i, a in enumerate(names):  # the request's scheduler is the one that runs
        for b in names[i + 1:]:
            assert not torch.equal(videos[a], videos[b]), (a, b)


def test_trim_to_requested_frames_keeps_the_first_frames_of_the_full_video(pipe, start_image):
    request = Request(prompt="a", image=start_image, **SMALL)  # 5 frames -> 2 latents -> 8 decoded (quirk 3)
    full = pipe.generate(request).frames
    request.trim_to_requested_frames = True
    trimmed = pipe.generate(request).frames
    assert full.shape[0] == 8 and trimmed.shape[0] == 5
    torch.testing.assert_close(trimmed, full[:5], atol=0, rtol=0)


def test_cli_writes_the_same_frames_as_the_engine(tiny_ckpt, pipe, tmp_path, start_image):
    out = tmp_path / "video.npz"
    args = ["--ckpt", str(tiny_ckpt), "--ref_img", str(ROOT / "tests/goldens/start.png"), "--FPS", "8",
            "--prompt", "a panda", "--width", "128", "--height", "128", "--video_length", "5",
            "--num_inference_steps", "2", "--seed", "42", "--out", str(out)]
    completed = subprocess.run([sys.executable, "-m", "droplet_core", *args], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "wrote" in completed.stdout and "peak RSS" in completed.stdout
    frames = np.load(out)["frames"]
    assert frames.dtype == np.float32 and frames.shape == (8, 128, 128, 3)
    expected = pipe.generate(Request(prompt="a panda", image=start_image, fps=8, seed=42, **SMALL)).frames
    # Not bitwise: two processes on a busy machine may split the GEMMs over different thread counts
    # (MKL adapts its threads to the load), a few float32 ulps; a wrong setting moves frames by 1e-2.
    np.testing.assert_allclose(frames, expected.numpy(), atol=1e-5, rtol=0)


def test_cli_engine_flags_become_engine_options():
    from droplet_core.cli import build_parser, engine_options_from_args
    from droplet_core.engine_options import EngineOptions

    flags = ["--offload", "block_swap", "--blocks_on_device", "10", "--fp8", "--fuse_qkv", "--t5_on_cpu", "--t5_fp8"]
    assert engine_options_from_args(build_parser().parse_args(["--ckpt", "tiny", *flags])) == EngineOptions(
        offload="block_swap", blocks_on_device=10, weights="fp8_e4m3fn", fuse_qkv=True, text_encoder_on_cpu=True,
        text_encoder_fp8=True)
    assert engine_options_from_args(build_parser().parse_args(["--ckpt", "tiny", "--offload"])) == EngineOptions(
        offload="model")


def test_cli_reports_bad_input_clearly(tiny_ckpt):
    completed = subprocess.run([sys.executable, "-m", "droplet_core", "--ckpt", str(tiny_ckpt), "--width", "500"],
                               cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 2
    assert "width 500 is not a multiple of 16: use 496 or 512" in completed.stderr


def test_video_outputs(tmp_path):
    from droplet_core.video_io import read_video, write_video

    frames = torch.rand(6, 32, 48, 3)
    write_video(frames, tmp_path / "v.gif")
    write_video(frames, tmp_path / "png")
    assert len(list((tmp_path / "png").glob("frame_*.png"))) == 6
    back = read_video(write_video(frames, tmp_path / "v.mp4", fps=8))
    assert back.shape == (6, 32, 48, 3)
    with pytest.raises(ValueError, match="unknown output type"):
        write_video(frames, tmp_path / "v.avi")


def test_engine_never_imports_comfyui():
    blocked = "import sys\nfor m in ('comfy', 'folder_paths', 'nodes', 'server', 'execution'): sys.modules[m] = None\n"
    modules = sorted(p.stem for p in (ROOT / "droplet_core").glob("*.py") if p.stem != "__main__")
    code = blocked + "".join(f"import droplet_core.{m}\n" for m in modules)
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
