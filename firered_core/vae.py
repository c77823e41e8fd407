"""The Qwen-Image VAE for single images: encode, decode, latent normalisation, tiled decode.

``FireRedVAE`` has exactly the state-dict keys of diffusers' ``AutoencoderKLQwenImage`` (``encoder.*``,
``quant_conv``, ``post_quant_conv``, ``decoder.*``), so a diffusers ``vae/`` folder or ComfyUI's
``qwen_image_vae.safetensors`` (after key conversion) loads with ``strict=True``. It computes what the
reference computes for a one-frame video (see ``vae_blocks`` for why T=1 collapses to 2D convolutions).

Usage::

    vae = FireRedVAE(VAEConfig())                 # or build on "meta" and load_state_dict(..., assign=True)
    z = vae.encode(images)                        # [B, 3, H, W] in [-1, 1] -> [B, 16, H/8, W/8], normalised
    images = vae.decode(z)                        # -> [B, 3, H, W] in [-1, 1]

* ``encode`` returns the posterior MODE (its mean, the first ``z_dim`` channels of ``quant_conv``'s output)
  normalised per channel, ``(mu - latents_mean) / latents_std``, the latent convention of the whole project;
  ``encode_raw`` skips the normalisation. Nothing is sampled: the edit pipeline uses the mode ("argmax").
* ``decode`` undoes the normalisation and decodes; the result is clamped to [-1, 1] like the reference.
  ``decode_raw`` takes un-normalised latents.
* Images must be ``[B, input_channels, H, W]`` with H and W multiples of ``spatial_compression`` (8); a video
  tensor ``[B, C, 1, H, W]`` is refused with a hint rather than silently squeezed.
* Compute runs in the input's dtype; weights stored in another dtype (bf16, fp8) are cast at compute time.

Tiled decode. The decoder's memory grows with the output area (its last levels run at full resolution with
96-192 channels, and the middle block attends over all latent pixels), so ``decode(z, tile=n)`` decodes
overlapping ``n x n`` latent tiles and blends them: along each axis, two neighbouring tiles cross-fade linearly
over their overlap, so the weights sum to one there (every pixel's weights are normalised anyway). Tiles are
spread evenly, so the actual overlap is at least ``tile_overlap`` latent pixels. A tile covering the whole
latent reproduces the untiled decode exactly. With ``tile=None`` (the default) tiling switches on by itself when
the output would exceed ``max_untiled_pixels`` (4 MP, so FireRed's ~1 MP outputs are decoded in one piece and
match the reference), using ``auto_tile`` latent pixels (512 output pixels) per tile; set
``max_untiled_pixels = None`` on an instance to never tile automatically. Tiles are not exact: the middle
block's attention sees only its tile, so expect small, smooth differences from the untiled result.

Public API: ``FireRedVAE``.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import torch
from torch import nn

from .config import VAEConfig
from .latent_norm import LatentNormalization
from .ops import DEFAULT_OPS
from .progress import CancelFn, ProgressFn, check_cancel
from .vae_blocks import VAEDecoder, VAEEncoder, causal_conv, make_causal_conv

log = logging.getLogger(__name__)

__all__ = ["FireRedVAE"]


class FireRedVAE(LatentNormalization, nn.Module):
    """Qwen-Image VAE (Wan-2.1 style causal 3D conv autoencoder) evaluated on single images."""

    # decode outputs above this many pixels are tiled automatically when no ``tile`` is given (None: never)
    max_untiled_pixels: int | None = 2048 * 2048
    # tile side in latent pixels used by automatic tiling
    auto_tile: int = 64

    def __init__(self, config: VAEConfig, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        z2 = config.z_dim * 2  # the encoder predicts mean and log-variance
        self.encoder = VAEEncoder(config, ops=ops, device=device, dtype=dtype)
        self.quant_conv = make_causal_conv(ops, z2, z2, 1, device=device, dtype=dtype)
        self.post_quant_conv = make_causal_conv(ops, config.z_dim, config.z_dim, 1, device=device, dtype=dtype)
        self.decoder = VAEDecoder(config, ops=ops, device=device, dtype=dtype)

    @property
    def spatial_compression(self) -> int:
        """Image pixels per latent pixel along one side."""
        return self.config.spatial_compression

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    # -----------------------------------------------------------------------------------------------------------
    # Latent normalisation
    # -----------------------------------------------------------------------------------------------------------

    # normalize / denormalize / _stats come from LatentNormalization (latent_norm.py)

    # -----------------------------------------------------------------------------------------------------------
    # Encode
    # -----------------------------------------------------------------------------------------------------------

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> posterior mean [B, z_dim, H/f, W/f], not normalised."""
        self._check_images(images)
        moments = causal_conv(self.quant_conv, self.encoder(images))  # [B, 2*z_dim, H/f, W/f]
        return moments[:, : self.z_dim]  # mean; the log-variance half is unused (mode, no sampling)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> normalised latents [B, z_dim, H/f, W/f]."""
        return self.normalize(self.encode_raw(images))

    # -----------------------------------------------------------------------------------------------------------
    # Decode
    # -----------------------------------------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Normalised latents [B, z_dim, h, w] -> images [B, C, h*f, w*f] in [-1, 1].

        ``tile``: tile side in latent pixels (None: automatic, see the module docstring); ``tile_overlap``:
        minimum overlap of neighbouring tiles in latent pixels. ``progress`` / ``cancel`` are reported / polled
        once per tile.
        """
        return self.decode_raw(self.denormalize(latents), tile=tile, tile_overlap=tile_overlap,
                               progress=progress, cancel=cancel)

    def decode_raw(self, z: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Raw (denormalised) latents [B, z_dim, h, w] -> images [B, C, h*f, w*f] in [-1, 1]."""
        self._check_latents(z, "decode")
        h, w = z.shape[-2:]
        f = self.spatial_compression
        if tile is None and self.max_untiled_pixels is not None and h * w * f * f > self.max_untiled_pixels:
            tile = self.auto_tile
            tile_overlap = min(tile_overlap, tile // 2)  # a small auto_tile must not make the default overlap invalid
            log.info("VAE decode: %dx%d output exceeds %d pixels, decoding in %d-latent tiles",
                     h * f, w * f, self.max_untiled_pixels, tile)
        if tile is None:
            check_cancel(cancel, "VAE decode")
            out = self._decode_tile(z)
            if progress is not None:
                progress(1, 1, None)
        else:
            out = self._decode_tiled(z, tile, tile_overlap, progress, cancel)
        return out.clamp(-1.0, 1.0)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> unclamped images, in one piece."""
        return self.decoder(causal_conv(self.post_quant_conv, z))

    def _decode_tiled(self, z: torch.Tensor, tile: int, overlap: int, progress: ProgressFn | None,
                      cancel: CancelFn | None) -> torch.Tensor:
        """Decode overlapping latent tiles and cross-fade them (see the module docstring)."""
        if tile < 1 or not 0 <= overlap < tile:
            raise ValueError(f"VAE decode: need tile >= 1 and 0 <= tile_overlap < tile, got tile={tile}, "
                             f"tile_overlap={overlap}")
        b, _, h, w = z.shape
        f = self.spatial_compression
        rows, cols = _tile_spans(h, tile, overlap), _tile_spans(w, tile, overlap)
        # accumulate in float32: half-precision sums of many weighted tiles lose the last bits visibly
        acc = torch.zeros(b, self.config.input_channels, h * f, w * f, device=z.device, dtype=torch.float32)
        weight_sum = torch.zeros(1, 1, h * f, w * f, device=z.device, dtype=torch.float32)
        total, done = len(rows) * len(cols), 0
        for r0, r1, r_lead, r_trail in rows:
            row_w = _ramp((r1 - r0) * f, r_lead * f, r_trail * f, z.device)  # [tile_h_px]
            for c0, c1, c_lead, c_trail in cols:
                check_cancel(cancel, "VAE tiled decode")
                col_w = _ramp((c1 - c0) * f, c_lead * f, c_trail * f, z.device)  # [tile_w_px]
                weight = row_w[:, None] * col_w[None, :]  # [tile_h_px, tile_w_px]
                pixels = self._decode_tile(z[:, :, r0:r1, c0:c1]).float()  # [B, C, tile_h_px, tile_w_px]
                acc[:, :, r0 * f:r1 * f, c0 * f:c1 * f] += pixels * weight
                weight_sum[:, :, r0 * f:r1 * f, c0 * f:c1 * f] += weight
                done += 1
                if progress is not None:
                    progress(done, total, None)
        return (acc / weight_sum).to(z.dtype)

    # -----------------------------------------------------------------------------------------------------------
    # Input validation
    # -----------------------------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        c, f = self.config.input_channels, self.spatial_compression
        _check_4d(images, "encode: images", f"[B, {c}, H, W]")
        if images.shape[1] != c:
            raise ValueError(f"encode: images must have {c} channels ([B, {c}, H, W]), got shape "
                             f"{tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(f"encode: image height and width must be positive multiples of {f}, got {h}x{w} "
                             f"(shape {tuple(images.shape)}); resize or crop first")

    def _check_latents(self, z: torch.Tensor, where: str) -> None:
        _check_4d(z, f"{where}: latents", f"[B, {self.z_dim}, h, w]")
        if z.shape[1] != self.z_dim:
            raise ValueError(f"{where}: latents must have z_dim={self.z_dim} channels, got shape {tuple(z.shape)}")
        if z.shape[-1] == 0 or z.shape[-2] == 0:
            raise ValueError(f"{where}: latents have an empty spatial size, shape {tuple(z.shape)}")


def _check_4d(x: torch.Tensor, what: str, layout: str) -> None:
    """Refuse non-tensors, non-float tensors and anything but 4-D, with a hint for one-frame video tensors."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if x.ndim == 5 and x.shape[2] == 1:
        raise ValueError(f"{what} must be 4-D {layout}; got a one-frame video tensor {tuple(x.shape)}, "
                         f"pass x[:, :, 0]")
    if x.ndim != 4:
        raise ValueError(f"{what} must be 4-D {layout}, got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Tiling geometry
# ---------------------------------------------------------------------------------------------------------------


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, overlap with the previous tile, overlap with the next tile) along one latent axis.

    The fewest tiles whose overlaps are all >= ``overlap``, spread evenly so the first starts at 0 and the last
    ends at ``length``.
    """
    if length <= tile:
        return [(0, length, 0, 0)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(k * (length - tile) / (count - 1)) for k in range(count)]
    spans = []
    for k, s in enumerate(starts):
        lead = starts[k - 1] + tile - s if k > 0 else 0
        trail = s + tile - starts[k + 1] if k + 1 < count else 0
        spans.append((s, s + tile, lead, trail))
    return spans


def _ramp(size: int, lead: int, trail: int, device: torch.device) -> torch.Tensor:
    """Blend weights [size] of one tile along one axis: rising over the first ``lead`` pixels, falling over the
    last ``trail``, 1 between.

    Neighbours share their overlap exactly, so the falling ramp of one and the rising ramp of the other sum to 1
    at every pixel (a linear cross-fade); pixel centres (``+0.5``) keep every weight above zero. Ramps are capped
    at half the tile so they never cross inside one tile.
    """
    pos = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones(size, device=device, dtype=torch.float32)
    lead, trail = min(lead, size // 2), min(trail, size // 2)
    if lead > 0:
        weight = torch.minimum(weight, pos / lead)
    if trail > 0:
        weight = torch.minimum(weight, (size - pos) / trail)
    return weight
