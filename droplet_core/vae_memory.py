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
"""

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXSpatialNorm3D


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
        batch, cache = vae.decoder(batch, conv_cache=cache)
        decoded.append(batch)
    return torch.cat(decoded, dim=2)


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
        scale, new_conv_cache["conv_y"] = self.conv_y(zq, conv_cache=conv_cache.get("conv_y"))
        out.mul_(scale)
        del scale
        shift, new_conv_cache["conv_b"] = self.conv_b(zq, conv_cache=conv_cache.get("conv_b"))
        return out.add_(shift), new_conv_cache


def trim_vae_memory(vae) -> None:
    """Swaps every spatial norm of a loaded VAE for the lean one (same parameters and keys)."""
    for module in vae.modules():
        if type(module) is CogVideoXSpatialNorm3D:
            module.__class__ = LeanSpatialNorm3D
