"""The tiny checkpoint's weights are the project's own (droplet_core/tiny.py), so no diffusers or
transformers upgrade can change them, nor the goldens computed on them."""

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from droplet_core import tiny
from droplet_core.pipeline import Request, load_pipeline
from engine_fixtures import start_image, tiny_ckpt  # noqa: F401

LIBRARY_INITS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                 "xavier_normal_", "orthogonal_", "constant_", "ones_", "zeros_")


def all_states():
    return {"transformer": tiny.transformer_state(tiny.TRANSFORMER), "vae": tiny.vae_state(tiny.VAE),
            "text_encoder": tiny.text_encoder_state()}


def assert_same(first: dict, second: dict) -> None:
    for component in first:
        assert first[component].keys() == second[component].keys(), component
        for name, tensor in first[component].items():
            assert torch.equal(tensor, second[component][name]), f"{component} {name}"


def test_weights_ignore_library_init_and_the_global_rng(monkeypatch):
    """Library init poisoned (torch.nn.init and the tensor methods it calls, which transformers'
    _init_weights calls too), torch.manual_seed a no-op, the global RNG elsewhere: same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first = all_states()

        def poisoned(tensor, *args, **kwargs):
            with torch.no_grad():
                return tensor.fill_(7.0)

        for name in LIBRARY_INITS:
            monkeypatch.setattr(torch.nn.init, name, poisoned)
        for name in ("normal_", "uniform_", "zero_", "random_", "bernoulli_", "exponential_"):
            monkeypatch.setattr(torch.Tensor, name, poisoned)
        torch.manual_seed(12345)
        torch.randn(1000)
        monkeypatch.setattr(torch, "manual_seed", lambda seed: torch.random.default_generator)
        second = all_states()
    assert_same(first, second)


def test_a_tensor_depends_only_on_component_name_and_shape():
    state = tiny.transformer_state(tiny.TRANSFORMER)
    for name in reversed(list(state)):  # each one alone, in the other order
        assert torch.equal(tiny.seeded_tensor("transformer", name, state[name].shape), state[name]), name
    # Names and components are told apart: no two tensors of one shape alike.
    q, k = "transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_k.weight"
    assert not torch.equal(state[q], state[k])
    assert not torch.equal(state[q], tiny.seeded_tensor("vae", q, state[q].shape))


def test_the_written_checkpoint_holds_these_tensors(tiny_ckpt):
    expected = all_states()
    written = {"transformer": load_file(str(tiny_ckpt / "transformer" / "diffusion_pytorch_model.safetensors")),
               "vae": load_file(str(tiny_ckpt / "vae" / "diffusion_pytorch_model.safetensors")),
               "text_encoder": {}}
    for shard in sorted((tiny_ckpt / "text_encoder").glob("model-*.safetensors")):
        written["text_encoder"].update(load_file(str(shard)))
    assert_same(expected, written)


@pytest.mark.parametrize("kind", ["weight", "bias", "norm", "embedding"])
def test_init_scales_by_kind(kind):
    name, shape = {"weight": ("blocks.0.ff.proj.weight", (64, 48)), "bias": ("blocks.0.ff.proj.bias", (4096,)),
                   "norm": ("blocks.0.norm.weight", (4096,)), "embedding": ("shared.weight", (500, 32))}[kind]
    tensor = tiny.seeded_tensor("transformer", name, shape)
    mean, std = {"weight": (0.0, (3 * 48) ** -0.5), "bias": (0.0, 0.1), "norm": (1.0, 0.1),
                 "embedding": (0.0, 1.0)}[kind]
    assert abs(float(tensor.mean()) - mean) < 0.1 * std + 1e-3
    assert float(tensor.std()) == pytest.approx(std, rel=0.1)


def test_tiny_model_is_well_behaved(tiny_ckpt, start_image):
    """Finite, unclipped video whose latents keep unit scale and depend on the start image."""
    pipe = load_pipeline(tiny_ckpt)
    base = dict(prompt="a panda", image=start_image, fps=8, seed=1, width=64, height=64, frames=5, steps=2)
    result = pipe.generate(Request(**base), keep_step_latents=True)
    frames = result.frames
    assert torch.isfinite(frames).all()
    assert 0.03 < float(frames.std()) < 0.4
    assert float(((frames <= 0.002) | (frames >= 0.998)).float().mean()) < 0.05
    assert all(0.5 < float(step.std()) < 2.0 for step in result.step_latents)
    flipped = pipe.generate(Request(**{**base, "image": start_image.transpose(Image.FLIP_LEFT_RIGHT)})).frames
    assert (frames - flipped).abs().max() > 0.1
