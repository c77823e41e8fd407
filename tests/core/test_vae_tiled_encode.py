"""Tiled VAE encode (firered_core.vae_tiling): exact with one tile, exact blending for a local network, close to the
untiled encode otherwise (no worse than diffusers' own tiled encode at the same geometry), automatic above
``max_untiled_pixels``; the whole-image CompactVAE accepts and ignores the tiling options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from firered_core.compact_vae import create_vae
from firered_core.config import CompactVAEConfig
from firered_core.vae import FireRedVAE
from tests.core.test_vae_parity import CONFIGS, _pair, _stats


def _smooth_image(height: int, width: int) -> torch.Tensor:
    """A photo-like image in [-1, 1]: smooth structure plus a little noise."""
    coarse = torch.rand(1, 3, height // 10 + 1, width // 10 + 1) * 2 - 1
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    return (image + 0.05 * torch.randn_like(image)).clamp(-1, 1)


@torch.no_grad()
def test_one_tile_is_exact_and_auto_tiling_uses_auto_tile() -> None:
    _, vae = _pair(CONFIGS["tiny"])
    image = _smooth_image(48, 80)  # 12 x 20 latents at 4x compression
    whole = vae.encode(image)
    assert torch.equal(vae.encode(image, tile=20), whole)
    vae.max_untiled_pixels, vae.auto_tile = 32 * 32, 8
    auto = vae.encode(image)
    assert torch.equal(auto, vae.encode(image, tile=8, tile_overlap=4)) and not torch.equal(auto, whole)
    vae.max_untiled_pixels = None
    assert torch.equal(vae.encode(image), whole)


@torch.no_grad()
def test_tiled_encode_is_close_to_untiled() -> None:
    """Not exact (attention in the middle block sees one tile; random weights make it far from local), so the bar
    is diffusers' tiled encode at the same geometry: 16-latent (64 px) tiles, 6 latents of overlap."""
    ref, vae = _pair(CONFIGS["tiny"])
    image = _smooth_image(96, 160)
    whole = vae.encode(image)
    err = (vae.encode(image, tile=16, tile_overlap=6) - whole).abs()
    mean, std = _stats(CONFIGS["tiny"])
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=40,
                      tile_sample_stride_width=40)
    ref_latents = (ref.encode(image[:, :, None]).latent_dist.mode() - mean) / std
    ref_err = (ref_latents[:, :, 0] - whole).abs()
    # measured: ours mean 0.005 / max 0.035, diffusers' tiling mean 0.007 / max 0.062 (mean |latent| 0.13)
    assert err.mean() <= 1.05 * ref_err.mean() and err.max() <= 1.05 * ref_err.max(), (err.max(), ref_err.max())
    assert err.mean() < 0.1 * whole.abs().mean()


@torch.no_grad()
def test_tile_blending_is_exact_for_a_local_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoder acting on each 4x4 pixel cell alone makes every tile agree on the overlap, so a correct blend
    (weights summing to one, tiles aligned to the latent grid) must return the untiled result."""
    config = CONFIGS["tiny"]
    vae = FireRedVAE(config)
    f = config.spatial_compression
    monkeypatch.setattr(vae, "_encode_tile", lambda x: F.avg_pool2d(x, f).tanh().repeat(1, 2, 1, 1)[:, :4])
    image = torch.rand(2, 3, 29 * f, 37 * f) * 2 - 1
    whole = vae.encode_raw(image)
    for tile, overlap in [(8, 2), (10, 7), (16, 0), (5, 4)]:
        tiled = vae.encode_raw(image, tile=tile, tile_overlap=overlap)
        assert (tiled - whole).abs().max().item() < 1e-6, (tile, overlap)


def test_bad_tiles_are_refused() -> None:
    vae = FireRedVAE(CONFIGS["tiny"])
    with pytest.raises(ValueError, match="tile_overlap"):
        vae.encode(torch.zeros(1, 3, 64, 64), tile=4, tile_overlap=4)


@torch.no_grad()
def test_the_compact_vae_ignores_tiling() -> None:
    config = CompactVAEConfig(base_dim=8, z_dim=4, levels=2, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    vae = create_vae(config).eval()
    image = _smooth_image(32, 48)
    whole = vae.encode(image)
    polls: list[int] = []
    tiled = vae.encode(image, tile=2, tile_overlap=1, progress=lambda done, total, _: polls.append(done),
                       cancel=lambda: False)
    assert torch.equal(tiled, whole) and polls == [1]
