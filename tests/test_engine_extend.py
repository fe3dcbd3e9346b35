"""Continuing a video in segments (continuation.py, segments.py), drift control (drift.py) and a
prompt per long-video window (prompt_schedule.py through sample_plan.sample), on the tiny model
or on fakes that record what the model is called with."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from droplet_core.conditioning import inpaint_latents
from droplet_core.continuation import (check_overlap, continuation_video_and_mask, fit_frames, join, last_frames,
                                       new_frames)
from droplet_core.drift import RAMP_FRAMES, channel_stats, drift
from droplet_core.pipeline import Request, load_pipeline
from droplet_core.prompt_schedule import window_prompts
from droplet_core.sample_plan import SampleInputs, SamplingPlan, sample
from droplet_core.sampling import COGVIDEOX_SCHEDULER_CONFIG
from droplet_core.segments import Extension, Segment, extend, read_plan
from droplet_core.vae_ops import decode_to_frames, encode_mode
from droplet_core.video_io import to_uint8
from engine_fixtures import start_image, tiny_ckpt  # noqa: F401

SIZE = dict(width=64, height=64)
K = 5  # overlap in the tests: 2 latent frames
SEGMENTS = [Segment("a red fox runs", 8, frames=13), Segment("the fox jumps", 16, frames=9),
            Segment("the fox sleeps", 4, frames=13, seed=7)]


def moving_frames(count: int, height: int = 64, width: int = 64, phase: float = 0.0) -> torch.Tensor:
    """A smooth moving colour pattern [count, H, W, 3] in 0..1 (whole periods: steady statistics)."""
    t = torch.arange(count, dtype=torch.float32)[:, None, None] * 0.3 + phase
    y, x = torch.meshgrid(torch.linspace(0, 2 * math.pi, height + 1)[:-1],
                          torch.linspace(0, 2 * math.pi, width + 1)[:-1], indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(x + t), 0.5 + 0.4 * torch.cos(y - t), 0.5 + 0.3 * torch.sin(x + y + 2 * t)]
    return torch.stack(channels, dim=-1)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):  # noqa: F811
    return load_pipeline(tiny_ckpt)


@pytest.fixture(scope="module")
def recorded(pipe, start_image):  # noqa: F811
    """A 3-segment run on the tiny model: the joined video, each segment's full frames, and the
    text embeddings, FPS and noise each transformer call received."""
    calls, segments = [], []
    forward, generate = pipe.transformer.forward, pipe.generate

    def watched_forward(hidden, text, timestep, fps, *args, **kwargs):
        calls.append((text.detach().clone(), fps.clone()))
        return forward(hidden, text, timestep, fps, *args, **kwargs)

    def watched_generate(request, *args, **kwargs):
        result = generate(request, *args, **kwargs)
        segments.append((request, result.frames.clone()))
        return result

    pipe.transformer.forward, pipe.generate = watched_forward, watched_generate
    try:
        request = Request(prompt="unused", image=start_image, frames=13, steps=2, seed=42, **SIZE)
        joined = extend(pipe, request, SEGMENTS, Extension(overlap=K))
    finally:
        del pipe.transformer.forward, pipe.generate
    return SimpleNamespace(joined=joined, calls=calls, segments=segments, request=request)


# Conditioning -------------------------------------------------------------------------------------------

def test_conditioning_holds_the_previous_frames_latents_at_the_known_positions(pipe):
    previous = moving_frames(13)
    frames, known = 13, previous[-K:]
    video, mask = continuation_video_and_mask(known, frames)
    inpaint = inpaint_latents(pipe.vae, video, mask, (4, 8, 8), torch.float32)  # [1, 4, 17, 8, 8]
    scale = pipe.vae.config.scaling_factor
    # The K frames encoded on their own: the causal VAE's latent frames 0..1 see frames 0..4 only.
    alone = encode_mode(pipe.vae, (known * 2 - 1).permute(3, 0, 1, 2)[None]) * scale  # [1, 16, 2, 8, 8]
    torch.testing.assert_close(inpaint[0, :2, 1:], alone[0].permute(1, 0, 2, 3), rtol=0, atol=1e-5)
    # Channel 0 is (1 - mask) x scale: mask 0 at the 2 known latent frames, 1 at the 2 generated.
    assert (inpaint[0, :2, 0] == scale).all() and (inpaint[0, 2:, 0] == 0).all()
    # The generated frames are masked to -1 before encoding: their latents ignore what lies there.
    noisy = video.clone()
    noisy[:, :, K:] = torch.rand_like(noisy[:, :, K:])
    torch.testing.assert_close(inpaint_latents(pipe.vae, noisy, mask, (4, 8, 8), torch.float32), inpaint, rtol=0, atol=0)


def test_joined_length_is_the_sum_of_the_segments_less_the_overlaps(recorded):
    counts = [13, 9, 13]
    assert [frames.shape[0] for _, frames in recorded.segments] == counts
    assert recorded.joined.shape == (sum(counts) - (len(counts) - 1) * K, 64, 64, 3)
    assert recorded.joined.dtype == torch.uint8
    first = recorded.segments[0][1]
    assert torch.equal(recorded.joined[:13], torch.from_numpy(to_uint8(first)))  # segment 0 kept whole


def test_each_segment_has_its_own_prompt_fps_and_seed(pipe, recorded):
    requests = [request for request, _ in recorded.segments]
    assert [r.seed for r in requests] == [42, 43, 7]  # seed + index, or the segment's own
    assert [r.known_frames is None for r in requests] == [True, False, False]
    steps = 2
    for index, segment in enumerate(SEGMENTS):
        expected = pipe.encode_prompts(replace(recorded.request, prompt=segment.prompt))
        for text, fps in recorded.calls[index * steps:(index + 1) * steps]:  # observed at the model call
            torch.testing.assert_close(text, torch.cat([expected[1], expected[0]]), rtol=0, atol=0)  # [neg, pos]
            assert fps.item() == segment.fps


def test_a_segments_first_frames_decode_as_the_vae_round_trip_of_the_previous_last_frames(pipe, recorded):
    """The bound: the overlap decodes to the VAE round trip of the previous frames within 0.02
    (mean abs, 0..1; measured 0.0084), the decoder's group norm seeing the generated latent next
    to them being the only difference. (The random-weight VAE's round trip itself is 0.075 from
    the frames; the release VAE's is far closer.)"""
    previous_tail = recorded.segments[0][1][-K:]
    overlap = recorded.segments[1][1][:K]
    pixels = (previous_tail * 2 - 1).permute(3, 0, 1, 2)[None]
    round_trip = decode_to_frames(pipe.vae, (encode_mode(pipe.vae, pixels) * pipe.vae.config.scaling_factor)
                                  .permute(0, 2, 1, 3, 4))[0].permute(1, 2, 3, 0)[:K]
    assert (overlap - round_trip).abs().mean() < 0.02


# Drift control ------------------------------------------------------------------------------------------

class DriftingPipe:
    """A fake generator that drifts as extended clips do: each segment continues the motion and the
    look of its known frames, then drifts away frame by frame (brighter, flatter, a colour cast),
    so without control the drift compounds from segment to segment. Its first frames repeat the
    known frames, as the model's do."""

    DRIFT = torch.tensor([0.006, 0.003, -0.001])  # per frame: offset per channel ...
    FLATTEN = 0.006  # ... and contrast loss

    def __init__(self):
        self.time, self.made = 0, []

    def generate(self, request, on_step=None):
        count, known = request.frames, request.known_frames
        frames = moving_frames(count, phase=0.3 * self.time)
        if known is not None:  # start from the known frames' look
            (mean, std), (k_mean, k_std) = channel_stats(frames), channel_stats(known)
            frames = (frames - mean) / std * k_std + k_mean
        j = torch.arange(count, dtype=torch.float32)[:, None, None, None]
        mean = frames.mean(dim=(0, 1, 2))
        frames = ((frames - mean) * (1 - self.FLATTEN * j) + mean + self.DRIFT * j).clamp(0, 1)
        if known is not None:
            frames[:known.shape[0]] = known
            self.time -= known.shape[0]
        self.time += count
        self.made.append(frames.clone())
        return SimpleNamespace(frames=frames)


SEGMENT_FRAMES, DRIFT_OVERLAP, DRIFT_SEGMENTS = 41, 9, 4


def drifting_run(drift_control: bool):
    """(joined video 0..1, the fake's segments as it made them)."""
    request, fake = Request(prompt="x", frames=SEGMENT_FRAMES, **SIZE), DriftingPipe()
    plan = [Segment(f"segment {i}", 8) for i in range(DRIFT_SEGMENTS)]
    return extend(fake, request, plan, Extension(DRIFT_OVERLAP, drift_control)).float() / 255, fake.made


def segment_drifts(video: torch.Tensor, reference):
    """The drift figure (drift.drift) of each continuing segment's new frames."""
    new = SEGMENT_FRAMES - DRIFT_OVERLAP
    return [drift(video[s:s + new], reference) for s in range(SEGMENT_FRAMES, video.shape[0], new)]


def test_drift_control_anchors_drifted_segments_within_tolerance_and_off_means_off():
    (off, made), (on, _) = drifting_run(False), drifting_run(True)
    reference = channel_stats(off[:SEGMENT_FRAMES])
    before, after = segment_drifts(off, reference), segment_drifts(on, reference)
    assert before[-1] > 0.5 and before[-1] > before[0] + 0.2  # the fake drifts, compounding
    assert max(after) < 0.1 and after[-1] - after[0] < 0.01  # the stated tolerance; no compounding
    raw = torch.cat([made[0]] + [m[DRIFT_OVERLAP:] for m in made[1:]])
    assert torch.equal(off, torch.from_numpy(to_uint8(raw)).float() / 255)  # off: the generator's frames


def test_anchoring_keeps_the_previous_frames_and_fades_in_after_the_seam():
    previous, segment = moving_frames(20), (moving_frames(30, phase=0.5) * 0.6 + 0.3)
    reference = channel_stats(previous)
    joined = join(previous, segment, K, reference)
    assert torch.equal(joined[:20], previous)
    correction = joined[20:] - segment[K:]
    # The first new frame moves by 1 / (ramp + 1) of the full correction, frames after the ramp by all of it.
    first, full = float(correction[0].abs().mean()), float(correction[RAMP_FRAMES + 1].abs().mean())
    assert full > 0.05 and first == pytest.approx(full / (RAMP_FRAMES + 1), rel=0.3)
    assert torch.equal(join(previous, segment, K), torch.cat([previous, segment[K:]]))


# Prompt schedule ----------------------------------------------------------------------------------------

class RecordingTransformer(torch.nn.Module):
    """Has the engine transformer's call signature; records (first frame index via the hidden
    states' marker channel, text) per call and predicts zeros."""

    def __init__(self, latent_frames: int = 4):
        super().__init__()
        self.config = SimpleNamespace(latent_frames=latent_frames, noise_channels=16, num_layers=1)
        self.calls = []

    def rotary(self, *args, **kwargs):
        return None

    def forward(self, hidden, text, timestep, fps, inpaint_latents=None, **kwargs):
        self.calls.append((hidden.shape[1], text.detach().clone()))
        return torch.zeros_like(hidden)


def test_every_window_gets_its_own_prompt_at_the_model_call():
    model = RecordingTransformer(latent_frames=4)
    prompts = [torch.full((1, 3, 8), float(i + 1)) for i in range(3)]
    negative = torch.zeros(1, 3, 8)
    plan = SamplingPlan(COGVIDEOX_SCHEDULER_CONFIG, steps=2, long_video=True, window_overlap=2)
    inputs = SampleInputs(prompts[0], torch.tensor([8]), negative, prompt_schedule=prompts)
    sample(model, plan, inputs, (8, 2, 2), "cpu", torch.float32)  # windows at 0, 2, 4
    assert len(model.calls) == 2 * 3
    for call, expected in zip(model.calls, [0, 1, 2] * 2):
        assert call[0] == 4 and torch.equal(call[1], torch.cat([negative, prompts[expected]]))


def test_schedule_rule_spreads_fewer_prompts_and_refuses_more():
    assert window_prompts(1, 3) == [0, 0, 0] and window_prompts(3, 3) == [0, 1, 2]
    assert window_prompts(2, 5) == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="4 prompts for 3 window.*at most 3 prompts"):
        window_prompts(4, 3)
    model = RecordingTransformer()
    inputs = SampleInputs(torch.zeros(1, 3, 8), torch.tensor([8]), prompt_schedule=[torch.zeros(1, 3, 8)] * 2)
    plan = SamplingPlan(COGVIDEOX_SCHEDULER_CONFIG, steps=1, guidance_scale=1.0)
    with pytest.raises(ValueError, match="2 prompts for 1 window"):  # no long video: one window
        sample(model, plan, inputs, (4, 2, 2), "cpu", torch.float32)


# Bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlap, frames, message", [
    (0, 13, "overlap 0: a continuation needs at least 1 known frame"),
    (13, 13, "overlap 13 is not smaller than the segment's 13 frames"),
    (8, 13, "overlap 8 is not on the VAE's 4k\\+1 frame grid.*use 5 or 9"),
])
def test_bad_overlaps_are_refused_with_the_fix(overlap, frames, message):
    with pytest.raises(ValueError, match=message):
        check_overlap(overlap, frames)
    with pytest.raises(ValueError, match=message):
        extend(DriftingPipe(), Request(prompt="x", frames=frames, **SIZE), [Segment("a", 8), Segment("b", 8)],
               Extension(overlap=overlap))


def test_a_previous_video_shorter_than_the_overlap_is_refused():
    with pytest.raises(ValueError, match="has 3 frames, fewer than the overlap of 5: use overlap 1 or less"):
        last_frames(moving_frames(3), 5, 64, 64)
    with pytest.raises(ValueError, match="has 3 frames, fewer than the overlap of 5"):
        extend(DriftingPipe(), Request(prompt="x", frames=13, **SIZE), [Segment("a", 8)], Extension(overlap=5),
               previous=moving_frames(3))


def test_a_previous_video_of_another_size_is_resized_per_mode_and_join_refuses_a_mismatch():
    wide = moving_frames(9, height=32, width=96)
    for mode in ("stretch", "crop", "pad"):
        assert fit_frames(wide, 64, 64, mode).shape == (9, 64, 64, 3)
    padded = fit_frames(wide, 64, 64, "pad")
    assert padded[:, 0].max() == 0 and padded[:, 32].min() > 0  # black bars above and below
    assert not torch.equal(fit_frames(wide, 64, 64, "crop"), fit_frames(wide, 64, 64, "stretch"))
    joined = extend(DriftingPipe(), Request(prompt="x", frames=13, **SIZE), [Segment("a", 8)],
                    Extension(overlap=5, resize_mode="crop"), previous=wide)
    assert joined.shape == (9 + 13 - 5, 64, 64, 3)
    with pytest.raises(ValueError, match="scale the previous video to the segment's size"):
        join(wide, moving_frames(13), 5)
    with pytest.raises(ValueError, match="unknown resize_mode 'fit'"):
        fit_frames(wide, 64, 64, "fit")


def test_empty_prompts_in_a_plan_or_schedule_are_refused(tmp_path, pipe):
    with pytest.raises(ValueError, match="prompt 2 of the schedule is empty"):
        extend(DriftingPipe(), Request(prompt="x", frames=13, **SIZE), [Segment("a", 8), Segment("  ", 8)])
    with pytest.raises(ValueError, match="prompt 2 of the schedule is empty"):
        pipe.encode_schedule(Request(prompt="x", prompt_schedule=["a", ""]))
    plan = tmp_path / "plan.json"
    plan.write_text('[{"prompt": "a", "fps": 8}, {"prompt": "b"}]')
    with pytest.raises(ValueError, match="segment 2 must be an object with prompt and fps"):
        read_plan(plan)


def test_new_frames_of_a_segment_drop_exactly_the_overlap():
    segment = moving_frames(13)
    assert torch.equal(new_frames(segment, 5), segment[5:])
