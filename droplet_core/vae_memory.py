"""Peak-memory trims for diffusers' CogVideoX VAE that leave its output bit for bit the same.

1. diffusers' `_decode` passes each frame batch the previous batch's causal-conv caches and
only lets go of the whole cache tree when the batch is done, so every layer's old and new
caches live side by side; the reference's layers swap theirs one at a time. `decode_latents`
runs the same frame-batch loop with caches that are dropped as soon as their layer has read them.

2. diffusers' CogVideoXSpatialNorm3D computes conv_y(zq) and conv_b(zq) before the group norm
and keeps all three alive for `norm * y + b`: at the decoder's full resolution that is one
activation more than the reference's AutoencoderKLDropletVideo holds (128 channels x 8
frames: 250 MB at 320x192, 1 GB at 672x384 in fp32). `LeanSpatialNorm3D` does the same operations in the
same order of rounding, multiplying and adding in place so each full-size temporary dies as
soon as it has been used.

3. diffusers' `_encode` feeds the encoder 8 frames at a time (the first batch takes the
remainder too: 13 frames at once for a 13-frame video); the reference's AutoencoderKLDropletVideo
feeds it 4 (the first batch 4 + the remainder). `encode_moments` runs the reference's batches
with read-once caches, which the causal convolutions and the first-frame-apart time
downsampling make equal to one pass over the whole video.

4. diffusers' CogVideoXResnetBlock3D keeps its SiLU input alive next to the SiLU output, and
each causal conv's unpadded input alive (the caller still holds it) while the padded copy and
the output exist: four full-size tensors at every convolution. `LeanResnetBlock3D` runs SiLU
and the residual add in place on fresh tensors and hands each conv its input without keeping a
reference (`causal_conv`), so the unpadded input dies before the output is allocated: three.

The diffusers internals all this relies on (the conv-cache protocol, `causal_conv`, the class
swap) are in diffusers_internals.py.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .diffusers_internals import CogVideoXResnetBlock3D, CogVideoXSpatialNorm3D, cached, causal_conv, swap_classes


class _ReadOnce(dict):
    """A cache level whose entries are released when read (each layer reads its own once)."""

    def get(self, key, default=None):
        return self.pop(key, default)


def _read_once(cache):
    return _ReadOnce({k: _read_once(v) for k, v in cache.items()}) if isinstance(cache, dict) else cache


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """vae.decode(z).sample without tiling: the same frame batches (quirk 3's pairs), leaner."""
    frame_batch = vae.num_latent_frames_batch_size
    frames, cache, decoded = z.shape[2], None, []
    for i in range(max(frames // frame_batch, 1)):
        remainder = frames % frame_batch
        start, end = frame_batch * i + (0 if i == 0 else remainder), frame_batch * (i + 1) + remainder
        batch = z[:, :, start:end]
        if vae.post_quant_conv is not None:
            batch = vae.post_quant_conv(batch)
        cache = _read_once(cache)
        batch, cache = cached(vae.decoder, batch, cache=cache)
        decoded.append(batch)
    return torch.cat(decoded, dim=2)


# The reference encodes 4 frames at a time (the first batch takes the remainder too); diffusers 8.
REFERENCE_ENCODE_FRAMES = 4


@torch.no_grad()
def encode_moments(vae, x: torch.Tensor) -> torch.Tensor:
    """The encoder's output (mean and log-variance channels) without tiling, in the reference's
    frame batches."""
    frames, cache, encoded = x.shape[2], None, []
    batch = REFERENCE_ENCODE_FRAMES
    bounds = [(0, frames)] if frames < batch else [
        (0 if i == 0 else batch * i + frames % batch, batch * (i + 1) + frames % batch) for i in range(frames // batch)]
    for start, end in bounds:
        cache = _read_once(cache)
        moments, cache = cached(vae.encoder, x[:, :, start:end], cache=cache)
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        encoded.append(moments)
    return torch.cat(encoded, dim=2)


class LeanSpatialNorm3D(CogVideoXSpatialNorm3D):
    def forward(self, f: torch.Tensor, zq: torch.Tensor, conv_cache=None):
        conv_cache = conv_cache or {}
        new_conv_cache = {}
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:  # the first frame has its own time slot, as in diffusers
            z_first = F.interpolate(zq[:, :, :1], size=f[:, :, :1].shape[-3:])
            z_rest = F.interpolate(zq[:, :, 1:], size=f[:, :, 1:].shape[-3:])
            zq = torch.cat([z_first, z_rest], dim=2)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        out = self.norm_layer(f)
        scale, new_conv_cache["conv_y"] = cached(self.conv_y, zq, cache=conv_cache.get("conv_y"))
        out.mul_(scale)
        del scale
        shift, new_conv_cache["conv_b"] = cached(self.conv_b, zq, cache=conv_cache.get("conv_b"))
        return out.add_(shift), new_conv_cache


class LeanResnetBlock3D(CogVideoXResnetBlock3D):
    def forward(self, inputs, temb=None, zq=None, conv_cache=None):
        if self.training or temb is not None or type(self.nonlinearity) is not nn.SiLU:
            return super().forward(inputs, temb, zq, conv_cache)  # not the VAE's inference path
        conv_cache = conv_cache or {}
        new_conv_cache = {}
        holder = [self._norm_silu("norm1", inputs, zq, conv_cache, new_conv_cache)]
        hidden, new_conv_cache["conv1"] = causal_conv(self.conv1, holder, conv_cache.get("conv1"))
        holder = [self._norm_silu("norm2", hidden, zq, conv_cache, new_conv_cache)]
        del hidden  # conv2 gets the only reference to its input (dropout is the identity in eval)
        hidden, new_conv_cache["conv2"] = causal_conv(self.conv2, holder, conv_cache.get("conv2"))
        if self.in_channels != self.out_channels:
            if self.use_conv_shortcut:
                inputs, new_conv_cache["conv_shortcut"] = cached(self.conv_shortcut, inputs,
                                                                 cache=conv_cache.get("conv_shortcut"))
            else:
                inputs = self.conv_shortcut(inputs)
        return hidden.add_(inputs), new_conv_cache

    def _norm_silu(self, name, x, zq, conv_cache, new_conv_cache):
        norm = getattr(self, name)
        if zq is not None:
            x, new_conv_cache[name] = cached(norm, x, zq, cache=conv_cache.get(name))
        else:
            x = norm(x)
        return F.silu(x, inplace=True)  # the norm's output is fresh: nobody else reads it


def trim_vae_memory(vae) -> None:
    """Swaps every spatial norm and resnet block of a loaded VAE for the lean ones (same
    parameters and keys)."""
    swap_classes(vae, {CogVideoXSpatialNorm3D: LeanSpatialNorm3D, CogVideoXResnetBlock3D: LeanResnetBlock3D})
