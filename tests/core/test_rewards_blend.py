"""Keeping a source region by latent blending (region_blend): the arithmetic, and exactness on the tiny VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.config import get_preset
from firered_core.images import to_pil
from firered_core.rewards.region_blend import blend_latents, encode_source, keep_region
from firered_core.vae import FireRedVAE


def test_blend_latents_averages_the_mask_onto_the_latent_grid() -> None:
    edited, source = torch.zeros(1, 4, 4, 4), torch.ones(1, 4, 4, 4)
    mask = torch.zeros(16, 16)
    mask[:8, :8] = 1.0  # top-left quarter of the pixels = top-left 2 x 2 latents
    mask[8:10, 8:12] = 1.0  # half of one latent pixel
    out = blend_latents(edited, source, mask)
    assert torch.equal(out[0, :, :2, :2], torch.ones(4, 2, 2))
    assert torch.allclose(out[0, :, 2, 2], torch.full((4,), 0.5)) and out[0, :, 3, 3].abs().sum() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        blend_latents(edited, torch.ones(1, 4, 2, 2), mask)


def test_keep_region_is_exact_at_the_mask_extremes() -> None:
    """All-zero mask: the edit decoded as the pipeline decodes it; all-one mask: the source's own latents."""
    vae = FireRedVAE(get_preset("tiny").vae).eval()
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    source_latents = encode_source(vae, source, 32, 32)
    assert source_latents.shape == (1, 4, 8, 8)
    edited = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = to_pil(vae.decode(edited))
        kept = to_pil(vae.decode(source_latents))
    zeros, ones = np.zeros((32, 32), np.float32), np.ones((32, 32), np.float32)
    assert np.array_equal(np.asarray(keep_region(vae, edited, source_latents, zeros)), np.asarray(plain))
    assert np.array_equal(np.asarray(keep_region(vae, edited, source_latents, ones)), np.asarray(kept))
    with pytest.raises(ValueError, match="mask is 16x16 px, the edit is 32x32 px"):
        keep_region(vae, edited, source_latents, np.zeros((16, 16), np.float32))
