"""The continuation nodes (DropletVideo Extend, Join Segments) against the engine's segments, and
the Prompt Schedule node through the DropletVideo Sampler, on the tiny model."""

import pytest
import torch

from droplet_core.continuation import known_latent_frames
from droplet_core.pipeline import Request
from droplet_core.segments import Extension, Segment, extend
from droplet_core.text import NEGATIVE_PROMPT
from droplet_core.video_io import to_uint8
from node_fixtures import as_image, engine, loaded, run, start_image  # noqa: F401

SIZE = dict(width=64, height=64, frames=9)
SAMPLING = dict(steps=2, cfg=6.0, scheduler="ddim", use_dynamic_cfg=False, denoise=1.0)
PROMPTS = ("a red fox runs through snow", "the fox jumps over a log")
OVERLAP = 5


def encode(pack, loaded, prompt):  # noqa: F811
    return run(pack, "DropletVideoTextEncode", text_encoder=loaded[2], prompt=prompt, negative_prompt=NEGATIVE_PROMPT,
               append_quality_suffix=True, max_tokens=400)


def sample_decode(pack, loaded, positive, negative, latent, seed):  # noqa: F811
    out = run(pack, "DropletVideoSampler", model=loaded[0], positive=positive, negative=negative, latent=latent,
              seed=seed, **SAMPLING)[0]
    return run(pack, "DropletVideoVAEDecode", vae=loaded[1], latent=out, tiling=False, trim_to_frames=True)[0]


def extend_inputs(loaded, previous, fps):  # noqa: F811
    return dict(vae=loaded[1], previous=previous, **SIZE, fps=fps, overlap=OVERLAP, resize_mode="stretch",
                noise_augmentation=False, noise_aug_strength=0.0563, noise_aug_seed=42, vae_tiling=False)


def test_extend_and_join_nodes_equal_the_engines_segments(pack, loaded, engine, start_image):  # noqa: F811
    # The graph: image-to-video, then Extend -> Sampler (seed + 1) -> Decode -> Join (reference: segment 0).
    positive, negative = encode(pack, loaded, PROMPTS[0])
    cond = run(pack, "DropletVideoImageEncode", positive=positive, negative=negative, vae=loaded[1], **SIZE, fps=8,
               resize_mode="stretch", noise_augmentation=False, noise_aug_strength=0.0563, noise_aug_seed=42,
               vae_tiling=False, start_image=as_image(start_image))
    first = sample_decode(pack, loaded, *cond, seed=42)
    positive, negative = encode(pack, loaded, PROMPTS[1])
    cond = run(pack, "DropletVideoExtend", positive=positive, negative=negative, **extend_inputs(loaded, first, 16))
    assert cond[0][0][1]["droplet_known_latent_frames"] == known_latent_frames(OVERLAP)
    second = sample_decode(pack, loaded, *cond, seed=43)
    joined = run(pack, "DropletVideoJoinSegments", previous=first, segment=second, overlap=OVERLAP,
                 drift_control=True, reference=first)[0]
    assert joined.shape == (9 + 9 - OVERLAP, 64, 64, 3)

    request = Request(prompt="", image=start_image, width=64, height=64, frames=9, steps=2, seed=42)
    engine_video = extend(engine, request, [Segment(PROMPTS[0], 8), Segment(PROMPTS[1], 16)], Extension(OVERLAP))
    difference = (torch.from_numpy(to_uint8(joined.cpu())).int() - engine_video.int()).abs()
    assert difference.max() <= 1  # uint8 truncation of frames equal to ~1e-5


def test_join_without_drift_control_is_the_plain_join_and_refuses_bad_overlaps(pack):
    previous, segment = torch.rand(9, 16, 16, 3), torch.rand(9, 16, 16, 3)
    joined = run(pack, "DropletVideoJoinSegments", previous=previous, segment=segment, overlap=5,
                 drift_control=False)[0]
    assert torch.equal(joined, torch.cat([previous, segment[5:]]))
    with pytest.raises(ValueError, match="overlap 4 is not on the VAE's 4k\\+1 frame grid"):
        run(pack, "DropletVideoJoinSegments", previous=previous, segment=segment, overlap=4, drift_control=False)
    with pytest.raises(ValueError, match="has 9 frames, fewer than the overlap of 13"):
        run(pack, "DropletVideoJoinSegments", previous=previous, segment=torch.rand(17, 16, 16, 3), overlap=13,
            drift_control=False)


def test_extend_refuses_a_previous_video_shorter_than_the_overlap(pack, loaded):  # noqa: F811
    positive, negative = encode(pack, loaded, PROMPTS[0])
    with pytest.raises(ValueError, match="has 3 frames, fewer than the overlap of 5: use overlap 1 or less"):
        run(pack, "DropletVideoExtend", positive=positive, negative=negative,
            **extend_inputs(loaded, torch.rand(3, 64, 64, 3), 8))


def test_prompt_schedule_gives_each_window_its_prompt_at_the_model_call(pack, loaded, monkeypatch):  # noqa: F811
    schedule = run(pack, "DropletVideoPromptSchedule", prompts="a fox in snow\na fox in a forest\n",
                   append_quality_suffix=True, max_tokens=400, text_encoder=loaded[2])[0]
    assert len(schedule) == 2
    positive, negative = encode(pack, loaded, "unused")
    cond = run(pack, "DropletVideoEmptyConditioning", positive=positive, negative=negative, width=64, height=64,
               frames=93, fps=8)  # 24 latent frames: windows of 22 at 0 and 2
    diffusion = loaded[0].model.diffusion_model
    texts, predict = [], diffusion.predict

    def watched(hidden, text, *args, **kwargs):
        texts.append(text.detach().clone())
        return predict(hidden, text, *args, **kwargs)

    monkeypatch.setattr(diffusion, "predict", watched)
    run(pack, "DropletVideoSampler", model=loaded[0], positive=cond[0], negative=cond[1], latent=cond[2], seed=1,
        long_video=True, window_overlap=11, prompt_schedule=schedule, **{**SAMPLING, "steps": 1})
    assert len(texts) == 2
    for text, prompt in zip(texts, schedule):
        torch.testing.assert_close(text, torch.cat([negative[0][0], prompt]).to(text), rtol=0, atol=0)


def test_prompt_schedule_refuses_empty_lines_and_too_many_prompts(pack, loaded):  # noqa: F811
    with pytest.raises(ValueError, match="prompt 2 of the schedule is empty"):
        run(pack, "DropletVideoPromptSchedule", prompts="a fox\n\na bird", append_quality_suffix=True,
            max_tokens=400, text_encoder=loaded[2])
    schedule = run(pack, "DropletVideoPromptSchedule", prompts="a fox\na bird", append_quality_suffix=True,
                   max_tokens=400, text_encoder=loaded[2])[0]
    positive, negative = encode(pack, loaded, "unused")
    cond = run(pack, "DropletVideoEmptyConditioning", positive=positive, negative=negative, width=64, height=64,
               frames=9, fps=8)
    with pytest.raises(ValueError, match="2 prompts for 1 window"):
        run(pack, "DropletVideoSampler", model=loaded[0], positive=cond[0], negative=cond[1], latent=cond[2],
            seed=1, prompt_schedule=schedule, **SAMPLING)
