"""The whole image-to-video path: prompt -> conditioning -> denoising -> frames.

`DropletVideoPipeline.generate` is what the CLI and the tests call; the ComfyUI nodes call the
same sampling entry point (sample_plan.sample) on ComfyUI's native model.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from . import shapes
from .axes import video_to_images
from .conditioning import NOISE_AUG_STRENGTH, i2v_video_and_mask, inpaint_latents
from .continuation import continuation_video_and_mask, known_latent_frames
from .engine_options import EngineOptions, offload_mode, prepare_transformer
from .fp8 import quantize_t5
from .loading import checkpoint_kind, load_scheduler_config, load_transformer, load_vae
from .lora import merge_loras
from .offload.plan import Workload, component_bytes, resolve_offload
from .offload.placement import Placement
from .positional import check_frames_fit, fps_tensor
from .prompt_schedule import check_prompts
from .sample_plan import SampleInputs, SamplingPlan, sample
from .sampling import StepCallback
from .text import MAX_SEQUENCE_LENGTH, NEGATIVE_PROMPT, TextEncoder, load_text_encoder, with_suffix
from .vae_ops import decode_to_frames, encode_video_latents

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Request:
    """One generation; defaults are DropletVideo's reference CLI's (inference.py); Droplet3D's
    differ in size and text length (model_kind.DROPLET3D), and it takes no notice of `fps`."""

    prompt: str
    image: Optional[Image.Image] = None  # start frame; None = text-to-video
    end_image: Optional[Image.Image] = None
    negative_prompt: str = NEGATIVE_PROMPT
    width: int = 672
    height: int = 384
    frames: int = 85
    fps: float = 16
    steps: int = 50
    seed: int = 42
    guidance_scale: float = 6.0
    use_dynamic_cfg: bool = False
    scheduler: str = "ddim"
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    append_prompt_suffix: bool = True
    video: Optional[torch.Tensor] = None  # V2V input frames [F, H, W, 3] in 0..1
    strength: float = 1.0  # < 1 without `video` starts from the conditioning video, as the reference
    noise_aug_strength: float = NOISE_AUG_STRENGTH
    tiled_vae: bool = False
    trim_to_requested_frames: bool = False  # opt-in fix for quirk 3 (85 requested -> 88 decoded)
    long_video: bool = False  # sliding windows past the model's trained length (long_video.py)
    window_overlap: int = 0  # latent frames shared by neighbouring windows (0 = half a window)
    cache_threshold: float = 0.0  # TeaCache-style step skipping (step_cache.py); 0 = off
    # Continuation (continuation.py): the previous video's last K frames [K, H, W, 3] 0..1 at this
    # size, known at the start of this one (in place of `image`).
    known_frames: Optional[torch.Tensor] = None
    prompt_schedule: Sequence[str] = ()  # long video: one prompt per window (prompt_schedule.py)

    def sampling_plan(self, scheduler_config: dict) -> SamplingPlan:
        return SamplingPlan(scheduler_config, scheduler=self.scheduler, steps=self.steps, strength=self.strength,
                            seed=self.seed, guidance_scale=self.guidance_scale, use_dynamic_cfg=self.use_dynamic_cfg,
                            long_video=self.long_video, window_overlap=self.window_overlap,
                            cache_threshold=self.cache_threshold)


@dataclass
class Result:
    frames: torch.Tensor  # [F, H, W, 3] float32 in 0..1
    latents: torch.Tensor  # [1, F_lat, 16, h, w]
    step_latents: list = field(default_factory=list)


def video_to_pixels(video: torch.Tensor, frames: int, width: int, height: int) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> [1, 3, F', H, W] -1..1 with F' = the first `frames` frames."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise ValueError(f"input video must be [frames, height, width, 3] with at least 1 frame, got {tuple(video.shape)}.")
    pixels = video[:frames].permute(0, 3, 1, 2).float()  # torch's image batch [F, 3, H, W], for resizing
    if pixels.shape[-2:] != (height, width):
        pixels = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    return (pixels * 2 - 1).permute(1, 0, 2, 3)[None]  # the VAE's [1, 3, F, H, W]


class DropletVideoPipeline:
    def __init__(self, transformer, vae, text_encoder: TextEncoder, scheduler_config: dict,
                 device="cpu", dtype=torch.float32, offload: Union[bool, str] = False,
                 blocks_on_device: Optional[int] = None, text_encoder_on_cpu: bool = False):
        """`offload`: none, model (True), block_swap (+ blocks_on_device) or sequential (placement.py)."""
        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.scheduler_config = scheduler_config
        self.device, self.dtype, self.offload = torch.device(device), dtype, offload_mode(offload)
        self.placement = Placement(self.offload, self.device, transformer, text_encoder.model, vae, blocks_on_device,
                                   text_encoder_on_cpu)
        self.text_device = torch.device("cpu") if text_encoder_on_cpu else self.device
        self.lora_unknown_keys: list = []
        self.parallel = None  # parallel.ParallelRun when several processes share each step (parallel/run.py)

    def encode_prompts(self, request: Request):
        with self.placement.on_device(self.text_encoder.model):
            positive = self.text_encoder.encode(with_suffix(request.prompt, request.append_prompt_suffix),
                                                request.max_sequence_length, self.text_device)
            negative = (self.text_encoder.encode(request.negative_prompt, request.max_sequence_length,
                                                 self.text_device)
                        if request.guidance_scale > 1.0 else None)
        cast = lambda x: None if x is None else x.to(self.device, self.dtype)  # noqa: E731
        return cast(positive), cast(negative)

    def encode_schedule(self, request: Request):
        """The schedule's embeddings, one per prompt (None without a schedule)."""
        if not request.prompt_schedule:
            return None
        check_prompts(request.prompt_schedule)
        with self.placement.on_device(self.text_encoder.model):
            return [self.text_encoder.encode(with_suffix(prompt, request.append_prompt_suffix),
                                             request.max_sequence_length, self.text_device).to(self.device, self.dtype)
                    for prompt in request.prompt_schedule]

    @staticmethod
    def conditioning_video(request: Request, frames: int):
        """(video, mask) of the conditioning: the known frames of a continuation, else start/end image."""
        if request.known_frames is not None:
            return continuation_video_and_mask(request.known_frames, frames)
        return i2v_video_and_mask(frames, request.width, request.height, request.image, request.end_image)

    @property
    def kind(self):
        """The model kind (model_kind.py) of the loaded transformer."""
        return self.transformer.config.kind

    def generate(self, request: Request, on_step: Optional[StepCallback] = None,
                 keep_step_latents: bool = False) -> Result:
        return self.generate_fps_sweep(request, [request.fps], on_step, keep_step_latents)[0]

    def generate_fps_sweep(self, request: Request, fps_values, on_step: Optional[StepCallback] = None,
                           keep_step_latents: bool = False) -> list:
        """One video per FPS value from the same seed; text and image are encoded once."""
        if len(fps_values) > 1 and not self.kind.has_fps:
            raise ValueError(f"an FPS sweep needs the FPS condition, which {self.kind.label} does not have: "
                             f"every video would be the same. Generate one video instead.")
        shapes.check_size(request.width, request.height)
        frames = shapes.round_frames(request.frames)
        if request.video is not None:
            frames = min(frames, shapes.round_frames(request.video.shape[0]))
        check_frames_fit(self.transformer.config, frames, request.long_video)
        latent_shape = ((frames - 1) // 4 + 1, request.height // 8, request.width // 8)
        fps_conditions = [fps_tensor(fps) for fps in fps_values]
        positive, negative = self.encode_prompts(request)
        schedule = self.encode_schedule(request)
        with self.placement.on_device(self.vae):
            video, mask = self.conditioning_video(request, frames)
            augment = self.transformer.config.add_noise_in_inpaint_model
            inpaint = inpaint_latents(self.vae, video, mask, latent_shape, self.dtype,
                                      request.noise_aug_strength if augment else None,
                                      torch.Generator().manual_seed(request.seed), request.tiled_vae)
        # The reference noises its `video` argument for strength < 1: the input video when given,
        # else the conditioning video (start image tiled, end image last; zeros for text-to-video).
        source = request.video if request.video is not None else video_to_images(video[0])
        known = 0 if request.known_frames is None else known_latent_frames(request.known_frames.shape[0])
        return [self._sample_and_decode(request, SampleInputs(positive, fps, negative, inpaint.to(self.device),
                                                               prompt_schedule=schedule, known_latent_frames=known),
                                         latent_shape, frames, source, on_step, keep_step_latents)
                for fps in fps_conditions]

    def _sample_and_decode(self, request, inputs: SampleInputs, latent_shape, frames, source_video,
                            on_step, keep_step_latents) -> Result:
        with self.placement.on_device(self.vae):
            inputs.start_video = self.video_latents(request, frames, source_video)
        step_latents = []

        def step_hook(i, total, step_result):
            if keep_step_latents:
                step_latents.append(step_result.detach().float().cpu().clone())
            if on_step is not None:
                on_step(i, total, step_result)

        plan = request.sampling_plan(self.scheduler_config)
        wrap_model = (lambda model: self.parallel.wrap(model, plan)) if self.parallel is not None else (lambda m: m)
        with self.placement.on_device(self.transformer):
            latents = sample(self.transformer, plan, inputs, latent_shape, self.device, self.dtype, on_step=step_hook,
                             wrap_model=wrap_model,
                             wrap_block_runner=self.placement.block_runner)
        decode = self.parallel.decode if self.parallel is not None else decode_to_frames
        with self.placement.on_device(self.vae):
            video = decode(self.vae, latents, request.tiled_vae)
        if video is None:
            return Result(torch.empty(0), latents.cpu(), step_latents)  # rank 0 alone keeps and writes the video
        video = video[0]
        if request.trim_to_requested_frames:
            video = video[:, :frames]
        return Result(video_to_images(video).cpu(), latents.cpu(), step_latents)

    def video_latents(self, request: Request, frames, source_video: torch.Tensor) -> Optional[torch.Tensor]:
        """V2V (strength < 1): the source video's latents, sampled with the run's seed; else None."""
        if request.strength >= 1.0:
            return None
        pixels = video_to_pixels(source_video, frames, request.width, request.height)
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        return encode_video_latents(self.vae, pixels, generator, request.tiled_vae)


def load_pipeline(ckpt, device="cpu", dtype: torch.dtype = torch.float32, offload: Union[bool, str] = False,
                  options: Optional[EngineOptions] = None, loras: Sequence[Tuple[str, float]] = (),
                  workload: Workload = Workload()) -> DropletVideoPipeline:
    """A pipeline from the released folder layout (DropletVideo-V1.0-weights/ or Droplet3D-5B/; the
    model kind is read from the files, model_kind.py).

    `options` (engine_options.py) sets offload, fp8 weights, attention, QKV fusion and compile;
    without it `offload` alone is used (True = model offload). LoRAs (path, strength) are merged
    before fp8/fusion. `workload` is the size offload 'auto' plans for."""
    options = (options or EngineOptions(offload=offload_mode(offload))).check()
    root = Path(ckpt)
    checkpoint_kind(root)  # reads model_index.json: a folder that mixes two models is refused here
    transformer = load_transformer(root / "transformer", dtype, keep_fp8=options.keep_fp8)
    vae = load_vae(root / "vae", dtype)
    text_encoder = load_text_encoder(root / "text_encoder", root / "tokenizer", dtype)
    unknown = merge_loras(transformer, list(loras)) if loras else []
    if options.text_encoder_fp8:
        logger.info("fp8 storage: %d T5 Linear layers", quantize_t5(text_encoder.model))
    prepare_transformer(transformer, options, dtype)
    on_device_text = None if options.text_encoder_on_cpu else text_encoder.model
    mode, blocks = resolve_offload(options.offload, options.blocks_on_device, device,
                                   component_bytes(transformer, on_device_text, vae), transformer.config, workload)
    pipe = DropletVideoPipeline(transformer, vae, text_encoder, load_scheduler_config(root / "scheduler"),
                                device, dtype, mode, blocks, options.text_encoder_on_cpu)
    pipe.lora_unknown_keys = unknown
    return pipe
