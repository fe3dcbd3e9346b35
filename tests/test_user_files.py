"""The values the pack takes from a user's files are read from them, never replaced by a default
(docs/user_files.md), and each fallback for a missing file says so in the log.

Each value is tried on two files that differ in it: the tiny checkpoint, whose values differ from
the library's and the reference classes' defaults and from the pack's fallbacks, and a copy that
says another value. A value hard-coded anywhere passes one of the two at most. The parity tests
(test_engine_parity, test_nodes_parity) run the same pairs against the official code's goldens."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from droplet_core import shapes, tiny
from droplet_core.conditioning import i2v_video_and_mask, inpaint_latents
from droplet_core.configs import COGVIDEOX_5B_CLASS_TRANSFORMER, TransformerConfig, VaeConfig
from droplet_core.loading import load_scheduler_config, load_transformer, load_vae, scheduler_config_for_transformer
from droplet_core.offload.plan import VAE_DECODE_PER_PIXEL, Workload, vae_decode_bytes
from droplet_core.positional import check_frames_fit
from droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG, make_scheduler
from droplet_core.text import load_tokenizer
from droplet_core.vae_ops import decode_to_frames
from engine_fixtures import GOLDENS, start_image, tiny_ckpt  # noqa: F401
from goldens.make_goldens import checkpoint_variant

CASES = json.loads((GOLDENS / "cases.json").read_text())
GRID = ("sample_width", "sample_height", "sample_frames")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def test_the_tiny_checkpoint_agrees_with_no_default():
    assert tiny.VAE.scaling_factor != VaeConfig().scaling_factor
    for defaults in (TransformerConfig(), COGVIDEOX_5B_CLASS_TRANSFORMER):
        assert all(getattr(tiny.TRANSFORMER, k) != getattr(defaults, k) for k in GRID)
    diffusers_ddim = make_scheduler({}).config
    for key in ("beta_start", "beta_end", "snr_shift_scale"):
        assert tiny.SCHEDULER[key] != COGVIDEOX_SCHEDULER_CONFIG[key]
    assert (tiny.SCHEDULER["beta_start"], tiny.SCHEDULER["beta_end"]) != \
        (diffusers_ddim.beta_start, diffusers_ddim.beta_end)


@pytest.mark.parametrize("file, key", [("vae/config.json", "scaling_factor"),
                                       ("scheduler/scheduler_config.json", "beta_start"),
                                       ("transformer/config.json", "sample_width"),
                                       ("transformer/config.json", "max_text_seq_length")])
def test_a_golden_case_reads_a_file_that_says_another_value(tiny_ckpt, file, key):
    """The other half of each pair: a case whose file differs from the tiny checkpoint's."""
    tiny_value = json.loads((tiny_ckpt / file).read_text())[key]
    others = [case["files"][file][key] for case in CASES.values() if key in case.get("files", {}).get(file, {})]
    assert others and all(value != tiny_value for value in others)


def variant(tiny_ckpt, tmp_path, files):
    return checkpoint_variant(tiny_ckpt, files, tmp_path / "variant")


@pytest.mark.parametrize("factor", [0.7, 1.15258426])
def test_the_vae_scaling_factor_is_the_files(tiny_ckpt, tmp_path, start_image, factor):
    """Conditioning latents are the encode x the file's factor, decoding divides by it."""
    vae = load_vae(variant(tiny_ckpt, tmp_path, {"vae/config.json": {"scaling_factor": factor}}) / "vae")
    plain = load_vae(variant(tiny_ckpt, tmp_path / "one", {"vae/config.json": {"scaling_factor": 1.0}}) / "vae")
    assert vae.config.scaling_factor == factor
    video, mask = i2v_video_and_mask(5, 32, 32, start_image)
    scaled, unit = (inpaint_latents(v, video, mask, (2, 4, 4), torch.float32) for v in (vae, plain))
    torch.testing.assert_close(scaled, unit * factor, atol=1e-6, rtol=1e-6)
    latents = torch.randn(1, 2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode_to_frames(vae, latents), decode_to_frames(plain, latents / factor))


@pytest.mark.parametrize("betas", [(tiny.SCHEDULER["beta_start"], tiny.SCHEDULER["beta_end"]), (0.0005, 0.02)])
def test_the_scheduler_betas_are_the_files(tiny_ckpt, tmp_path, betas):
    files = {"scheduler/scheduler_config.json": {"beta_start": betas[0], "beta_end": betas[1]}}
    config = load_scheduler_config(variant(tiny_ckpt, tmp_path, files) / "scheduler")
    expected = torch.linspace(betas[0] ** 0.5, betas[1] ** 0.5, 1000, dtype=torch.float32) ** 2
    first = make_scheduler(config).betas[0]  # zero-SNR rescaling moves the betas but the first
    torch.testing.assert_close(first, expected[0])


def test_max_text_seq_length_other_than_226_is_refused_on_the_table_path_and_kept_with_rotary(tiny_ckpt, tmp_path):
    files = {"transformer/config.json": {"max_text_seq_length": 300}}
    with pytest.raises(ValueError, match="max_text_seq_length is 300.*runs only with 226.*set max_text_seq_length"):
        load_transformer(variant(tiny_ckpt, tmp_path, files) / "transformer")
    rotary = {"transformer/config.json": {"max_text_seq_length": 300, "use_rotary_positional_embeddings": True}}
    model = load_transformer(variant(tiny_ckpt, tmp_path / "rotary", rotary) / "transformer")
    assert model.config.max_text_seq_length == 300


@pytest.mark.parametrize("grid", [{}, {"sample_width": 90, "sample_height": 60, "sample_frames": 49}])
def test_the_positional_grid_is_the_files(tiny_ckpt, tmp_path, grid):
    model = load_transformer(variant(tiny_ckpt, tmp_path, {"transformer/config.json": grid}) / "transformer")
    config = {**{k: getattr(tiny.TRANSFORMER, k) for k in GRID}, **grid}
    assert {k: getattr(model.config, k) for k in GRID} == config
    rows, cols = config["sample_height"] // 2, config["sample_width"] // 2
    assert model.pos_table.shape[0] == ((config["sample_frames"] - 1) // 4 + 1) * rows * cols
    check_frames_fit(model.config, config["sample_frames"])
    with pytest.raises(ValueError, match=f"{config['sample_frames'] + 4} frames = .* exceed the positional table"):
        check_frames_fit(model.config, config["sample_frames"] + 4)


# Fallbacks: what a missing file gives, and the log line that says so ----------------------------------

def test_a_transformer_file_without_config_logs_the_defaults_it_takes(tiny_ckpt, tmp_path, caplog):
    single = tmp_path / "droplet_transformer.safetensors"
    shutil.copyfile(tiny_ckpt / "transformer" / WEIGHTS, single)
    with caplog.at_level(logging.WARNING, logger="droplet_core.loading"):
        model = load_transformer(single)
    assert {k: getattr(model.config, k) for k in GRID} == {k: getattr(TransformerConfig(), k) for k in GRID}
    assert (f"{single} has no config.json beside it and no config in its metadata: its shape is read off the "
            f"weights, but what the weights cannot tell takes the reference class's defaults: a positional grid "
            f"of 720x480 pixels x 49 frames (longer videos are refused), 226 text positions") in caplog.text


def test_a_config_that_lacks_a_field_logs_the_default_it_takes(tiny_ckpt, tmp_path, caplog):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_ckpt / "transformer", folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    del config["sample_frames"], config["spatial_interpolation_scale"]
    config_file.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="droplet_core.configs"):
        model = load_transformer(folder)
    assert model.config.sample_frames == 49 and model.config.sample_height == tiny.TRANSFORMER.sample_height
    assert (f"{config_file} does not say sample_frames, spatial_interpolation_scale: the reference class's default "
            f"is used (sample_frames=49, spatial_interpolation_scale=1.875)") in caplog.text


def test_a_vae_file_without_config_logs_cogvideox_2b_and_its_factor(tiny_ckpt, tmp_path, caplog):
    single = tmp_path / "droplet_vae.safetensors"
    shutil.copyfile(tiny_ckpt / "vae" / WEIGHTS, single)
    # The tiny VAE is smaller than CogVideoX-2B's, so the load is refused, after the line that says so.
    with caplog.at_level(logging.WARNING, logger="droplet_core.loading"), \
            pytest.raises(ValueError, match="read with CogVideoX-2B's VAE config: the file has none"):
        load_vae(single)
    assert (f"{single} has no config.json beside it and no config in its metadata: it is loaded as the CogVideoX "
            f"VAE class's defaults, CogVideoX-2B's config, with latent scaling_factor 1.15258426") in caplog.text


def test_a_tokenizer_folder_with_spiece_model_alone_logs_the_t5_defaults(tiny_ckpt, tmp_path, caplog):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    shutil.copyfile(tiny_ckpt / "tokenizer" / "spiece.model", folder / "spiece.model")
    with caplog.at_level(logging.WARNING, logger="droplet_core.text"):
        load_tokenizer(folder)
    assert (f"{folder} has spiece.model but not tokenizer_config.json or special_tokens_map.json or "
            f"added_tokens.json: the tokenizer takes transformers' T5 defaults") in caplog.text
    caplog.clear()
    load_tokenizer(tiny_ckpt / "tokenizer")
    assert "T5 defaults" not in caplog.text


def test_a_transformer_alone_finds_its_scheduler_or_logs_the_cogvideox_one(tiny_ckpt, tmp_path, caplog):
    linked = tmp_path / "diffusion_models" / "droplet-transformer"
    linked.parent.mkdir()
    linked.symlink_to(tiny_ckpt / "transformer")  # a release folder's part linked into ComfyUI's models
    assert scheduler_config_for_transformer(tiny_ckpt / "transformer") == tiny.SCHEDULER
    assert scheduler_config_for_transformer(linked) == tiny.SCHEDULER
    single = tmp_path / "single" / "droplet.safetensors"
    single.parent.mkdir()
    shutil.copyfile(tiny_ckpt / "transformer" / WEIGHTS, single)
    with caplog.at_level(logging.WARNING, logger="droplet_core.loading"):
        assert scheduler_config_for_transformer(single) == COGVIDEOX_SCHEDULER_CONFIG
    assert (f"{single}: no scheduler_config.json beside it, nor a scheduler/ folder beside it as in the release "
            f"folder: sampling with the schedule the CogVideoX models ship (v-prediction, zero terminal SNR, "
            f"trailing timesteps, betas 0.00085 to 0.012)") in caplog.text
    shutil.copyfile(tiny_ckpt / "scheduler" / "scheduler_config.json", single.parent / "scheduler_config.json")
    assert scheduler_config_for_transformer(single) == tiny.SCHEDULER


# The 4k+1 frame rule and the decoded frame count (quirk 3) ------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_decoded_frames_are_the_official_pipelines(name):
    """The goldens' frame counts come from the official pipeline: odd latent counts (1, 3) give 4L-3
    frames, even ones (2, 4) 4L."""
    latents = shapes.latent_frames(CASES[name]["frames"])
    assert shapes.decoded_frames(latents) == int(load_file(str(GOLDENS / f"{name}.safetensors"))["frames"])


def test_the_goldens_cover_odd_and_even_latent_counts():
    counts = {shapes.latent_frames(case["frames"]) for case in CASES.values()}
    assert {1, 2, 3, 4} <= counts


@pytest.mark.parametrize("latent_count", [1, 2, 3, 4, 5, 22])
def test_the_vae_decodes_the_frames_the_rule_says(tiny_ckpt, latent_count):
    vae = load_vae(tiny_ckpt / "vae")
    frames = decode_to_frames(vae, torch.zeros(1, latent_count, 16, 2, 2)).shape[2]
    assert frames == shapes.decoded_frames(latent_count)
    assert shapes.video_frames(latent_count) == 4 * latent_count - 3
    assert shapes.latent_frames(shapes.video_frames(latent_count)) == latent_count


@pytest.mark.parametrize("frames, decoded", [(85, 88), (49, 49), (5, 8), (9, 9), (1, 1)])
def test_the_offload_plan_counts_the_decoded_frames(frames, decoded):
    work = Workload(width=64, height=32, frames=frames, act_bytes=2, tiled_vae=False)
    pixels = work.width * work.height
    assert vae_decode_bytes(work) == (VAE_DECODE_PER_PIXEL * pixels + 2 * 3 * decoded * pixels) * 2
