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

Tiling (``vae_tiling.py``). Memory grows with the image area, so ``decode(z, tile=n)`` decodes overlapping
``n x n`` latent tiles and ``encode(images, tile=n)`` encodes overlapping ``8n x 8n`` pixel tiles; both cross-fade
neighbouring tiles linearly over an overlap of at least ``tile_overlap`` latent pixels. One tile covering the whole
input gives exactly the untiled result. With ``tile=None`` (the default) tiling switches on by itself when the
image would exceed ``max_untiled_pixels`` (4 MP, so FireRed's ~1 MP images are processed in one piece and match
the reference), using ``auto_tile`` latent pixels (512 image pixels) per tile; set ``max_untiled_pixels = None`` on
an instance to never tile automatically. Tiles are not exact: the middle block's attention sees only its tile and
convolutions see zeros at tile edges, so expect small, smooth differences from the untiled result (measured in
tests/core/test_vae_parity.py: decode mean 0.035 on outputs of mean magnitude 0.21 with random tiny weights; encode see
``test_tiled_encode_is_close_to_untiled``).

Public API: ``FireRedVAE``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from torch import nn

from .config import VAEConfig
from .latent_norm import LatentNormalization
from .ops import DEFAULT_OPS
from .progress import CancelFn, ProgressFn, check_cancel
from .vae_blocks import VAEDecoder, VAEEncoder, causal_conv, make_causal_conv
from .vae_tiling import run_tiled, tile_spans

log = logging.getLogger(__name__)

__all__ = ["FireRedVAE"]


class FireRedVAE(LatentNormalization, nn.Module):
    """Qwen-Image VAE (Wan-2.1 style causal 3D conv autoencoder) evaluated on single images."""

    # images above this many pixels are encoded / decoded in tiles when no ``tile`` is given (None: never)
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

    def encode_raw(self, images: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> posterior mean [B, z_dim, H/f, W/f], not normalised.

        ``tile``: tile side in latent pixels (None: automatic, see the module docstring); ``tile_overlap``: minimum
        overlap of neighbouring tiles in latent pixels. ``progress`` / ``cancel`` are reported / polled per tile.
        """
        self._check_images(images)
        f = self.spatial_compression
        grid = (images.shape[-2] // f, images.shape[-1] // f)
        tile, tile_overlap = self._auto_tile(tile, tile_overlap, images.shape[-2] * images.shape[-1], "encode")
        if tile is None:
            check_cancel(cancel, "VAE encode")
            out = self._encode_tile(images)
            if progress is not None:
                progress(1, 1, None)
            return out
        return run_tiled(self._encode_tile, images, grid=grid, tile=tile, overlap=tile_overlap, scale_in=f,
                         scale_out=1, out_channels=self.z_dim, what="VAE tiled encode", progress=progress,
                         cancel=cancel)

    def encode(self, images: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> normalised latents [B, z_dim, H/f, W/f] (tiling as ``encode_raw``)."""
        return self.normalize(self.encode_raw(images, tile=tile, tile_overlap=tile_overlap, progress=progress,
                                              cancel=cancel))

    def _encode_tile(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> posterior mean, in one piece."""
        moments = causal_conv(self.quant_conv, self.encoder(images))  # [B, 2*z_dim, H/f, W/f]
        return moments[:, : self.z_dim]  # mean; the log-variance half is unused (mode, no sampling)

    def _auto_tile(self, tile: int | None, overlap: int, pixels: int, what: str) -> tuple[int | None, int]:
        """The tile to use: ``tile`` as given, or ``auto_tile`` when ``pixels`` exceed ``max_untiled_pixels``."""
        if tile is None and self.max_untiled_pixels is not None and pixels > self.max_untiled_pixels:
            log.info("VAE %s: %d pixels exceed %d, working in %d-latent tiles", what, pixels,
                     self.max_untiled_pixels, self.auto_tile)
            # a small auto_tile must not make the default overlap invalid
            return self.auto_tile, min(overlap, self.auto_tile // 2)
        return tile, overlap

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
        tile, tile_overlap = self._auto_tile(tile, tile_overlap, h * w * f * f, "decode")
        if tile is None:
            check_cancel(cancel, "VAE decode")
            out = self._decode_tile(z)
            if progress is not None:
                progress(1, 1, None)
        else:
            out = run_tiled(self._decode_tile, z, grid=(h, w), tile=tile, overlap=tile_overlap, scale_in=1,
                            scale_out=f, out_channels=self.config.input_channels, what="VAE tiled decode",
                            progress=progress, cancel=cancel)
        return out.clamp(-1.0, 1.0)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> unclamped images, in one piece."""
        return self.decoder(causal_conv(self.post_quant_conv, z))

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


_tile_spans = tile_spans  # the name the tests and older callers use
