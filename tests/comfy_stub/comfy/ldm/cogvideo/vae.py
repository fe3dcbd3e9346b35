"""Stand-in for comfy.ldm.cogvideo.vae (ComfyUI 0.33): core's CogVideoX VAE, here built from
diffusers' AutoencoderKLCogVideoX blocks, which have the same architecture and key names.

What the stand-in keeps of core's behaviour, since it decides the numbers:
- the release's widths unless told otherwise (comfy.sd.VAE passes only latent_channels);
- encode returns the distribution's mean, the encoder run over frame batches of 8 with the
  remainder first, the causal caches carried from batch to batch, except after a lone first
  frame (9, 17, ... 8k+1 frames), where core's single-frame shortcut leaves no cache, so the
  next batch starts afresh;
- decode is rolling: conv_in, the mid block and the time-upsampling up blocks run on the whole
  latent, the remaining up blocks and the output layers on chunks of 4 frames, carrying caches.
"""

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLCogVideoX as DiffusersCogVideoXVae

ENCODE_FRAMES = 8
DECODE_CHUNK = 4


def _time_expanded(z: torch.Tensor, frames: int) -> torch.Tensor:
    """z stretched to `frames` in time (nearest), the first frame apart when the count is odd."""
    if frames > 1 and frames % 2 == 1:
        rest = F.interpolate(z[:, :, 1:], size=(frames - 1, *z.shape[3:]))
        return torch.cat([z[:, :, :1], rest], dim=2)
    return F.interpolate(z, size=(frames, *z.shape[3:]))


class AutoencoderKLCogVideoX(torch.nn.Module):
    def __init__(self, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 512), latent_channels=16,
                 layers_per_block=3, act_fn="silu", eps=1e-6, groups=32, temporal_compression_ratio=4):
        super().__init__()
        levels = len(block_out_channels)
        vae = DiffusersCogVideoXVae(in_channels=in_channels, out_channels=out_channels,
                                    down_block_types=("CogVideoXDownBlock3D",) * levels,
                                    up_block_types=("CogVideoXUpBlock3D",) * levels,
                                    block_out_channels=tuple(block_out_channels), latent_channels=latent_channels,
                                    layers_per_block=layers_per_block, act_fn=act_fn, norm_eps=eps,
                                    norm_num_groups=groups, temporal_compression_ratio=temporal_compression_ratio)
        self.encoder, self.decoder = vae.encoder, vae.decoder
        self.time_levels = int(temporal_compression_ratio).bit_length() - 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        first = frames % ENCODE_FRAMES
        bounds = ([(0, first)] if first else []) + [(s, s + ENCODE_FRAMES) for s in range(first, frames, ENCODE_FRAMES)]
        cache, moments = None, []
        for start, end in bounds:
            out, cache = self.encoder(x[:, :, start:end], conv_cache=cache)
            if end - start == 1 and start == 0:
                cache = None  # core's causal convs keep no cache after a lone first frame (their 2D fast path)
            moments.append(out)
        return torch.cat(moments, dim=2).chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder
        x, _ = decoder.conv_in(z)
        x, _ = decoder.mid_block(x, None, z)
        for block in decoder.up_blocks[:self.time_levels]:
            x, _ = block(x, None, z)
        zq = _time_expanded(z, x.shape[2])
        caches, chunks = {}, []
        for start in range(0, x.shape[2], DECODE_CHUNK):
            chunk, z_chunk = x[:, :, start:start + DECODE_CHUNK], zq[:, :, start:start + DECODE_CHUNK]
            for index in range(self.time_levels, len(decoder.up_blocks)):
                chunk, caches[index] = decoder.up_blocks[index](chunk, None, z_chunk, conv_cache=caches.get(index))
            chunk, caches["norm_out"] = decoder.norm_out(chunk, z_chunk, conv_cache=caches.get("norm_out"))
            chunk, caches["conv_out"] = decoder.conv_out(decoder.conv_act(chunk), conv_cache=caches.get("conv_out"))
            chunks.append(chunk)
        return torch.cat(chunks, dim=2)
