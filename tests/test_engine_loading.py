"""Loading: the released layout, single files, channel padding, and every bad case's message."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from droplet_core.loading import load_transformer, load_vae
from droplet_core.pipeline import load_pipeline
from droplet_core.shapes import check_size, round_frames
from droplet_core.text import load_text_encoder
from droplet_core.tiny import TRANSFORMER
from engine_fixtures import tiny_ckpt  # noqa: F401

WEIGHTS = "diffusion_pytorch_model.safetensors"


def outputs_of(model):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, 8, 8, generator=generator)
    inpaint = torch.randn(1, 2, 17, 8, 8, generator=generator)
    text = torch.randn(1, 226, 32, generator=generator)
    with torch.no_grad():
        return model(x, text, torch.tensor([700]), torch.tensor([8]), inpaint)


def test_released_layout_with_sharded_text_encoder(tiny_ckpt):
    shards = sorted(p.name for p in (tiny_ckpt / "text_encoder").glob("*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    pipe = load_pipeline(tiny_ckpt)
    assert pipe.transformer.config.in_channels == 33
    assert pipe.text_encoder.encode("a cat", 400).shape == (1, 400, 32)


def test_single_file_transformer_without_config_is_inferred(tiny_ckpt, tmp_path):
    single = tmp_path / "droplet_transformer.safetensors"
    shutil.copyfile(tiny_ckpt / "transformer" / WEIGHTS, single)
    # The grid (sample_*) cannot be read off shapes: give the tiny one, as a user would with config.json.
    folder_model = load_transformer(tiny_ckpt / "transformer")
    grid = {k: getattr(TRANSFORMER, k) for k in ("sample_width", "sample_height", "sample_frames")}
    inferred = load_transformer(single, config_overrides=grid)
    assert inferred.config == folder_model.config
    assert torch.equal(outputs_of(inferred), outputs_of(folder_model))


def test_single_file_with_config_in_metadata_and_prefixed_keys(tiny_ckpt, tmp_path):
    state = load_file(str(tiny_ckpt / "transformer" / WEIGHTS))
    config = (tiny_ckpt / "transformer" / "config.json").read_text()
    single = tmp_path / "comfy_style.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(single), metadata={"config": config})
    assert torch.equal(outputs_of(load_transformer(single)), outputs_of(load_transformer(tiny_ckpt / "transformer")))


def test_sixteen_channel_checkpoint_loads_zero_padded(tiny_ckpt, tmp_path):
    folder = tmp_path / "t2v_transformer"
    shutil.copytree(tiny_ckpt / "transformer", folder)
    state = load_file(str(folder / WEIGHTS))
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"][:, :16].contiguous()
    save_file(state, str(folder / WEIGHTS))
    model = load_transformer(folder)
    weight = model.patch_embed.proj.weight
    assert weight.shape[1] == 33
    assert torch.equal(weight[:, :16], state["patch_embed.proj.weight"])
    assert torch.count_nonzero(weight[:, 16:]) == 0


def test_weights_load_in_the_requested_dtype(tiny_ckpt):
    model = load_transformer(tiny_ckpt / "transformer", torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")


def copy_with_config(source: Path, folder: Path, edit) -> Path:
    """A copy of a component folder whose config.json went through `edit` (a dict -> None)."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_missing_config_field_is_named(tiny_ckpt, tmp_path):
    folder = copy_with_config(tiny_ckpt / "transformer", tmp_path / "transformer", lambda c: c.pop("num_layers"))
    with pytest.raises(ValueError, match="'num_layers' is missing"):
        load_transformer(folder)


def test_unknown_config_field_is_named(tiny_ckpt, tmp_path):
    folder = copy_with_config(tiny_ckpt / "vae", tmp_path / "vae", lambda c: c.update(magic_channels=7))
    with pytest.raises(ValueError, match="unknown config field 'magic_channels' = 7"):
        load_vae(folder)


def test_pickle_files_are_refused(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="pickle.*safetensors"):
        load_transformer(folder)
    with pytest.raises(ValueError, match="pickle"):
        load_transformer(folder / "diffusion_pytorch_model.bin")


def test_pickle_only_text_encoder_is_refused(tiny_ckpt, tmp_path):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    shutil.copyfile(tiny_ckpt / "text_encoder" / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        load_text_encoder(folder, tiny_ckpt / "tokenizer")


def test_corrupt_safetensors_header(tiny_ckpt, tmp_path):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_ckpt / "transformer", folder)
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[8:40] = b"{not json at all" + b" " * 16
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        load_transformer(folder)


def test_weights_that_do_not_match_the_config(tiny_ckpt, tmp_path):
    folder = copy_with_config(tiny_ckpt / "transformer", tmp_path / "transformer", lambda c: c.update(num_layers=3))
    with pytest.raises(ValueError, match="do not match the config.*missing"):
        load_transformer(folder)


@pytest.mark.parametrize("width,height,message", [(500, 384, "width 500 is not a multiple of 16: use 496 or 512"),
                                                  (672, 8, "height 8 is too small")])
def test_bad_sizes(width, height, message):
    with pytest.raises(ValueError, match=message):
        check_size(width, height)


def test_frame_rounding_and_zero_frames():
    assert [round_frames(n) for n in (1, 5, 8, 9, 85, 86)] == [1, 5, 5, 9, 85, 85]
    with pytest.raises(ValueError, match="frames 0 must be at least 1"):
        round_frames(0)
