"""The transformer against diffusers' CogVideoX, and the reference quirks pinned one by one."""

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from droplet_core.configs import TransformerConfig
from droplet_core.loading import load_transformer
from droplet_core.positional import REFERENCE_TEXT_ROWS, positional_rows, sincos_table_3d
from droplet_core.shapes import decoded_frames
from droplet_core.tiny import TRANSFORMER
from engine_fixtures import tiny_ckpt  # noqa: F401

ROWS, COLS = TRANSFORMER.sample_height // 2, TRANSFORMER.sample_width // 2  # the config grid in patches
PER_FRAME = ROWS * COLS
# A small grid for forward passes (weights do not depend on it): 16x16 latents, 4 latent frames.
SMALL_GRID = {"sample_width": 16, "sample_height": 16, "sample_frames": 13}


def diffusers_twin(model, rotary: bool) -> CogVideoXTransformer3DModel:
    """diffusers' CogVideoX with the same weights (all but fps_*): the independent implementation."""
    c = model.config
    twin = CogVideoXTransformer3DModel(
        num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, time_embed_dim=c.time_embed_dim,
        text_embed_dim=c.text_embed_dim, num_layers=c.num_layers, sample_width=c.sample_width,
        sample_height=c.sample_height, sample_frames=c.sample_frames, max_text_seq_length=c.max_text_seq_length,
        use_rotary_positional_embeddings=rotary, use_learned_positional_embeddings=False)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fps_")}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("patch_embed.pos_embedding") for k in missing)
    return twin.eval()


@pytest.mark.parametrize("rotary", [False, True])
def test_transformer_equals_diffusers_where_architectures_coincide(tiny_ckpt, rotary):
    model = load_transformer(tiny_ckpt / "transformer",
                             config_overrides={"use_rotary_positional_embeddings": rotary, **SMALL_GRID})
    torch.nn.init.zeros_(model.fps_embedding.linear_2.weight)  # FPS MLP contributes zero
    torch.nn.init.zeros_(model.fps_embedding.linear_2.bias)
    twin = diffusers_twin(model, rotary)
    c = model.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, c.latent_frames, 16, c.sample_height, c.sample_width, generator=generator)
    inpaint = torch.randn(2, c.latent_frames, 17, c.sample_height, c.sample_width, generator=generator)
    text = torch.randn(2, c.max_text_seq_length, c.text_embed_dim, generator=generator)
    timestep = torch.tensor([999, 999])
    rope = model.rotary(c.latent_frames, c.sample_height, c.sample_width)
    with torch.no_grad():
        ours = model(latents, text, timestep, torch.tensor([8]), inpaint, image_rotary_emb=rope)
        theirs = twin(torch.cat([latents, inpaint], 2), text, timestep, image_rotary_emb=rope, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_fps_changes_the_prediction(tiny_ckpt):
    model = load_transformer(tiny_ckpt / "transformer")
    x = torch.randn(1, 2, 33 - 17, 8, 8)
    text = torch.randn(1, 226, 32)
    with torch.no_grad():
        a = model(x, text, torch.tensor([500]), torch.tensor([8]), torch.zeros(1, 2, 17, 8, 8))
        b = model(x, text, torch.tensor([500]), torch.tensor([32]), torch.zeros(1, 2, 17, 8, 8))
    assert (a - b).abs().max() > 1e-3


def test_quirk1_text_tokens_past_226_read_the_video_table():
    table = sincos_table_3d(TRANSFORMER)
    rows = positional_rows(table, TRANSFORMER, 400, 4, ROWS, COLS)
    assert rows.shape == (1, 400 + 4 * PER_FRAME, TRANSFORMER.inner_dim)
    assert torch.equal(rows[0, :REFERENCE_TEXT_ROWS], torch.zeros(REFERENCE_TEXT_ROWS, TRANSFORMER.inner_dim))
    assert torch.equal(rows[0, REFERENCE_TEXT_ROWS:400], table[: 400 - REFERENCE_TEXT_ROWS])


def test_quirk2_time_axis_is_not_interpolated():
    table = sincos_table_3d(TRANSFORMER)
    two_frames = positional_rows(table, TRANSFORMER, 226, 2, ROWS, COLS)
    assert torch.equal(two_frames[0, 226:], table[: 2 * PER_FRAME])  # the config's first time slices
    with pytest.raises(ValueError, match="exceed the positional table"):
        positional_rows(table, TRANSFORMER, 226, TRANSFORMER.latent_frames + 1, ROWS, COLS)


def test_spatial_interpolation_keeps_the_grid_at_config_size():
    table = sincos_table_3d(TRANSFORMER)
    same = positional_rows(table, TRANSFORMER, 226, TRANSFORMER.latent_frames, ROWS, COLS)
    assert torch.equal(same[0, 226:], table)  # trilinear at the same size is the identity
    wide = positional_rows(table, TRANSFORMER, 226, 4, 6, 10)
    assert wide.shape[1] == 226 + 4 * 6 * 10
    assert not torch.equal(wide[0, 226:226 + 60], table[:60])


def test_sincos_table_matches_diffusers():
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    config = TransformerConfig(num_attention_heads=2, attention_head_dim=32, sample_width=12, sample_height=8,
                               sample_frames=9)
    theirs = get_3d_sincos_pos_embed(64, (6, 4), 3, 1.875, 1.0, output_type="pt").flatten(0, 1)
    torch.testing.assert_close(sincos_table_3d(config), theirs.float(), atol=1e-6, rtol=0)


def test_quirk3_even_latent_count_decodes_to_four_frames_per_latent(tiny_ckpt):
    from droplet_core.loading import load_vae
    from droplet_core.vae_ops import decode_to_frames

    vae = load_vae(tiny_ckpt / "vae")
    for latent_count, expected in ((2, 8), (3, 9), (4, 16)):
        video = decode_to_frames(vae, torch.randn(1, latent_count, 16, 4, 4))
        assert video.shape[2] == expected == decoded_frames(latent_count)


def stock_vae(tiny_ckpt):
    """The tiny VAE with diffusers' own modules in place of vae_memory's lean ones."""
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXResnetBlock3D, CogVideoXSpatialNorm3D

    from droplet_core.loading import load_vae
    from droplet_core.vae_memory import LeanResnetBlock3D, LeanSpatialNorm3D

    vae = load_vae(tiny_ckpt / "vae")
    swapped = {LeanSpatialNorm3D: CogVideoXSpatialNorm3D, LeanResnetBlock3D: CogVideoXResnetBlock3D}
    lean = [m for m in vae.modules() if type(m) in swapped]
    assert {type(m) for m in lean} == set(swapped)  # load_vae put both lean kinds in
    for module in lean:
        module.__class__ = swapped[type(module)]
    return vae


@pytest.mark.parametrize("latent_frames", [1, 2, 3, 5, 6])
def test_lean_vae_decode_and_encode_equal_diffusers_bit_for_bit(tiny_ckpt, latent_frames):
    """vae_memory's frame-batch loops (decode: diffusers' pairs; encode: the reference's batches of
    4), in-place spatial norm and resnet blocks change memory, not numbers."""
    from droplet_core.loading import load_vae
    from droplet_core.vae_memory import decode_latents, encode_moments

    lean, stock = load_vae(tiny_ckpt / "vae"), stock_vae(tiny_ckpt)
    z = torch.randn(1, 16, latent_frames, 6, 8, generator=torch.Generator().manual_seed(latent_frames))
    with torch.no_grad():
        expected = stock.decode(z).sample
        assert torch.equal(decode_latents(lean, z), expected)
        video = expected[:, :, :4 * latent_frames - 3]  # 4k+1 frames (1 .. 21), as encoded
        assert torch.equal(encode_moments(lean, video), stock.encode(video).latent_dist.parameters)


@pytest.mark.parametrize("height, width", [(384, 672), (272, 480), (80, 592)])
def test_tiled_vae_keeps_the_video_size_with_any_tile_config(tiny_ckpt, height, width):
    """The test VAE's 64 px tiles with diffusers' 1/6 overlap do not line up (tiled encodes came out
    50 x 92 instead of 48 x 84 at 384 x 672); align_tiles picks an overlap that does."""
    from droplet_core.loading import load_vae
    from droplet_core.vae_ops import decode_to_frames, encode_mode

    vae = load_vae(tiny_ckpt / "vae")
    seen = {"encoder": [], "decoder": []}  # the (height, width) each call of the encoder and decoder gets
    for name, calls in seen.items():
        getattr(vae, name).register_forward_pre_hook(lambda module, args, calls=calls: calls.append(args[0].shape[3:]))
    video = torch.rand(1, 3, 5, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode_mode(vae, video, tiled=True)
    assert latents.shape == (1, 16, 2, height // 8, width // 8)
    frames = decode_to_frames(vae, latents.permute(0, 2, 1, 3, 4), tiled=True)
    assert frames.shape == (1, 3, 8, height, width)
    # The tiled path really ran: every call got one tile at most, and more than one tile covered the frame.
    tiles = {"encoder": (vae.tile_sample_min_height, vae.tile_sample_min_width),
             "decoder": (vae.tile_latent_min_height, vae.tile_latent_min_width)}
    for name, calls in seen.items():
        (max_h, max_w), sizes = tiles[name], set(calls)
        assert len(sizes) > 1 and all(h <= max_h and w <= max_w for h, w in sizes), (name, sizes)
