"""Bad input the engine must refuse by name, with the fix, before it costs anything: a weight file
cut short, a config that does not fit its weights, a LoRA holding NaN/inf, latents that turn
NaN/inf mid-run, and more frames than the positional table holds."""

import json
import shutil

import pytest
import torch

from droplet_core import pipeline as pipeline_module
from droplet_core.loading import load_transformer, load_vae
from droplet_core.lora import merge_loras
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.positional import check_frames_fit
from droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG, denoising_loop, make_scheduler, timesteps_for
from droplet_core.tiny import TRANSFORMER
from engine_fixtures import start_image, tiny_ckpt  # noqa: F401
from lora_files import write_peft

WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_weight_file_cut_short_names_the_file_sizes_and_the_fix(tiny_ckpt, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(tiny_ckpt / "vae", folder)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) - 1000])  # header intact, the last 1000 bytes missing
    message = rf"{WEIGHTS} is incomplete: {len(data) - 1000:,} bytes, its header says {len(data):,}.*re-download"
    with pytest.raises(ValueError, match=message):
        load_vae(folder)


def test_config_heads_that_do_not_fit_the_weights_name_the_field_before_any_fitting(tiny_ckpt, tmp_path):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_ckpt / "transformer", folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 4  # the weights have 2 heads of 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: config field 'num_attention_heads' = 4 does not match "
                                         r"the weights in .*diffusion_pytorch_model\.safetensors \(which say 2\)"):
        load_transformer(folder)


def test_lora_with_nan_is_refused_by_file_and_key_before_anything_is_merged(tiny_ckpt, tmp_path):
    model = load_transformer(tiny_ckpt / "transformer")
    before = {name: p.clone() for name, p in model.named_parameters()}
    down = torch.zeros(4, 32)
    up = torch.zeros(32, 4)
    up[3, 1] = float("nan")
    write_peft(tmp_path / "nan.safetensors", {"transformer_blocks.0.attn1.to_q": (down, up)})
    with pytest.raises(ValueError, match=r"nan\.safetensors: LoRA tensor "
                                         r"'transformer\.transformer_blocks\.0\.attn1\.to_q\.lora_B\.weight' holds NaN/inf"):
        merge_loras(model, [(str(tmp_path / "nan.safetensors"), 1.0)])
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


class TurnsNaN(torch.nn.Module):
    """A stand-in transformer whose prediction is NaN from its `bad_call`-th call on."""

    def __init__(self, bad_call):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def rotary(self, frames, height, width, device=None):
        return None

    def forward(self, hidden_states, *args, **kwargs):
        self.calls += 1
        return hidden_states * (float("nan") if self.calls >= self.bad_call else 0.5)


def test_latents_that_turn_nan_stop_the_run_at_that_step():
    scheduler = make_scheduler(COGVIDEOX_SCHEDULER_CONFIG, "ddim")
    timesteps = timesteps_for(scheduler, 4)
    latents = torch.randn(1, 2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 8, 32)
    seen = []
    with pytest.raises(ValueError, match=r"sampling step 3 of 4 produced NaN/inf latents"):
        denoising_loop(TurnsNaN(bad_call=3), scheduler, latents, timesteps, positive=text, negative=None,
                       inpaint=None, fps=torch.tensor([8]), guidance_scale=1.0,
                       on_step=lambda i, total, x: seen.append(i))
    assert seen == [0, 1]  # the callback (previews) never receives the bad latents


def test_frames_past_the_positional_table_are_refused_up_front():
    table, most = TRANSFORMER.latent_frames, TRANSFORMER.max_video_frames  # the tiny's 23 = 89 frames
    check_frames_fit(TRANSFORMER, most)
    check_frames_fit(TRANSFORMER, 2 * most, long_video=True)  # sliding windows take any length
    with pytest.raises(ValueError, match=rf"{most + 4} frames = {table + 1} latent frames exceed the positional table "
                                         rf"of this model \({table} latent frames = {most} video frames.*at most {most} "
                                         rf"frames, or use long-video"):
        check_frames_fit(TRANSFORMER, most + 4)


def test_pipeline_checks_frames_before_the_vae_encode(tiny_ckpt, start_image, monkeypatch):
    pipe = load_pipeline(tiny_ckpt)
    encodes = []
    monkeypatch.setattr(pipeline_module, "inpaint_latents", lambda *args, **kwargs: encodes.append(1))
    with pytest.raises(ValueError, match="169 frames = 43 latent frames exceed the positional table"):
        pipe.generate(Request(prompt="a panda", image=start_image, width=64, height=64, frames=169, steps=1))
    assert encodes == []
