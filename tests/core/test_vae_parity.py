"""FireRedVAE against diffusers' AutoencoderKLQwenImage, the reference, with the same random weights.

The reference runs the way the edit pipeline runs it: images as one-frame videos, ``encode(...).latent_dist.mode()``
normalised like ``_encode_vae_image``, and ``decode`` of latents denormalised like the pipeline's last step.
Weights come from the reference's state dict (loaded into ours with strict=True) after every parameter,
including the RMS-norm gammas and the biases, has been perturbed so no parameter keeps a trivial value.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage

from firered_core.config import VAEConfig, get_preset
from firered_core.vae import FireRedVAE, _tile_spans

TOL = 1e-5

SMALL = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=2, temperal_downsample=(False, True, True),
                  latents_mean=(0.3, -0.5, 0.1, 0.9), latents_std=(2.0, 0.7, 1.3, 1.1))
CONFIGS = {"tiny": get_preset("tiny").vae, "small": SMALL}


def _reference(config: VAEConfig) -> AutoencoderKLQwenImage:
    kwargs = {k: v for k, v in config.to_dict().items() if k != "_class_name"}
    return AutoencoderKLQwenImage(**kwargs).eval()


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.mul_(1.0 + 0.2 * noise)


def _pair(config: VAEConfig) -> tuple[AutoencoderKLQwenImage, FireRedVAE]:
    ref = _reference(config)
    _perturb(ref)
    ours = FireRedVAE(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _stats(config: VAEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, config.z_dim, 1, 1, 1)
    return torch.tensor(config.latents_mean).view(shape), torch.tensor(config.latents_std).view(shape)


# ---------------------------------------------------------------------------------------------------------------
# 1. Numerical parity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_encode_matches_reference(name: str) -> None:
    config = CONFIGS[name]
    ref, ours = _pair(config)
    images = torch.rand(2, 3, 48, 80) * 2 - 1
    mean, std = _stats(config)
    expected = (ref.encode(images[:, :, None]).latent_dist.mode() - mean) / std  # [B, z, 1, h, w]
    got = ours.encode(images)
    f = config.spatial_compression
    assert got.shape == (2, config.z_dim, 48 // f, 80 // f)
    diff = (got - expected[:, :, 0]).abs().max().item()
    assert diff <= TOL, f"{name}: encode max abs diff {diff:.3g}"
    raw = ours.encode_raw(images)
    assert torch.allclose(ours.normalize(raw), got) and torch.allclose(ours.denormalize(got), raw, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_decode_matches_reference(name: str) -> None:
    config = CONFIGS[name]
    ref, ours = _pair(config)
    latents = torch.randn(2, config.z_dim, 6, 10)  # normalised, as the sampler produces them
    mean, std = _stats(config)
    raw = latents[:, :, None] / (1.0 / std) + mean  # the pipeline's denormalisation
    expected = ref.decode(raw).sample[:, :, 0]
    got = ours.decode(latents)
    assert got.shape == expected.shape
    # a saturated decoder would make the clamp hide every difference
    assert (expected.abs() < 1).float().mean() > 0.5, "reference output is mostly clamped; weaken the weights"
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"{name}: decode max abs diff {diff:.3g}"


@torch.no_grad()
def test_encoder_attention_blocks_match_reference() -> None:
    """attn_scales puts attention inside down_blocks. diffusers' cached encode() cannot run it (its attention
    block takes no cache arguments), so compare with its encoder called without a cache, which is the same
    computation for one frame."""
    config = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=2, attn_scales=(1.0, 0.5),
                       temperal_downsample=(False, True), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    ref, ours = _pair(config)
    images = torch.rand(1, 3, 16, 24) * 2 - 1
    expected = ref.quant_conv(ref.encoder(images[:, :, None]))[:, : config.z_dim, 0]
    diff = (ours.encode_raw(images) - expected).abs().max().item()
    assert diff <= TOL, f"encoder attention: max abs diff {diff:.3g}"


@torch.no_grad()
def test_low_precision_storage_computes_in_input_dtype() -> None:
    """Weights stored as bf16 are cast to the float32 input at compute time (the ops contract)."""
    _, ours = _pair(CONFIGS["tiny"])
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    full = ours.encode(images)
    stored = ours.to(torch.bfloat16).encode(images)
    assert stored.dtype == torch.float32
    assert (stored - full).abs().max().item() < 0.05 * full.abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# 2. The released architecture: keys and shapes
# ---------------------------------------------------------------------------------------------------------------


def test_default_config_has_reference_keys_and_shapes() -> None:
    with torch.device("meta"):
        ref = AutoencoderKLQwenImage()
    ours = FireRedVAE(VAEConfig(), device="meta")
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(our_shapes) == sorted(ref_shapes)
    assert our_shapes == ref_shapes
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == 126_892_531


# ---------------------------------------------------------------------------------------------------------------
# 3. Tiled decode
# ---------------------------------------------------------------------------------------------------------------


def _smooth_latent(z_dim: int, h: int, w: int) -> torch.Tensor:
    coarse = torch.randn(1, z_dim, h // 8 + 1, w // 8 + 1)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)


@torch.no_grad()
def test_single_tile_is_exact_and_auto_tiling_uses_auto_tile() -> None:
    _, ours = _pair(CONFIGS["tiny"])
    latents = _smooth_latent(4, 12, 20)
    whole = ours.decode(latents)
    assert torch.equal(ours.decode(latents, tile=20), whole)
    ours.max_untiled_pixels, ours.auto_tile = 32 * 32, 8  # 48x80 output exceeds the budget
    auto = ours.decode(latents)
    assert torch.equal(auto, ours.decode(latents, tile=8, tile_overlap=4)) and not torch.equal(auto, whole)
    ours.max_untiled_pixels = None
    assert torch.equal(ours.decode(latents), whole)


@torch.no_grad()
def test_tiled_decode_is_close_to_untiled() -> None:
    """Tiles cannot be exact (the middle block's attention sees one tile only, and with random weights it is far
    from local), so the bar is diffusers' own tiled decode at the same geometry: 16-latent tiles, 6 overlap."""
    ref, ours = _pair(CONFIGS["tiny"])
    latents = _smooth_latent(4, 24, 40)
    whole = ours.decode(latents)
    err = (ours.decode(latents, tile=16, tile_overlap=6) - whole).abs()
    mean, std = _stats(CONFIGS["tiny"])
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=40,
                      tile_sample_stride_width=40)
    ref_err = (ref.decode(latents[:, :, None] / (1.0 / std) + mean).sample[:, :, 0] - whole).abs()
    # measured: ours mean 0.035 / max 0.31, diffusers' tiling mean 0.038 / max 0.38 (mean |output| 0.21)
    assert err.mean() <= 1.05 * ref_err.mean() and err.max() <= 1.05 * ref_err.max(), (err.max(), ref_err.max())
    assert err.mean() < 0.05


@torch.no_grad()
def test_tile_blending_is_exact_for_a_local_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a decoder that acts pixel by pixel, every tile agrees on the overlap, so any correct blend (weights
    summing to one) must return the untiled result: this isolates the tiling geometry from the network."""
    config = CONFIGS["tiny"]
    ours = FireRedVAE(config)
    f = config.spatial_compression
    monkeypatch.setattr(ours, "_decode_tile", lambda z: F.interpolate(z[:, :3].tanh(), scale_factor=f))
    latents = torch.randn(2, config.z_dim, 29, 37)
    whole = ours.decode_raw(latents)
    for tile, overlap in [(8, 2), (10, 7), (16, 0), (5, 4)]:
        tiled = ours.decode_raw(latents, tile=tile, tile_overlap=overlap)
        assert (tiled - whole).abs().max().item() < 1e-6, (tile, overlap)


@pytest.mark.parametrize("length,tile,overlap", [(29, 8, 2), (37, 10, 7), (64, 16, 0), (7, 8, 2), (100, 64, 8)])
def test_tile_spans_cover_with_minimum_overlap(length: int, tile: int, overlap: int) -> None:
    spans = _tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (s0, e0, _, trail), (s1, e1, lead, _) in zip(spans, spans[1:]):
        assert e0 - s1 >= overlap and trail == lead == e0 - s1 and s0 < s1
    assert all(e - s == min(tile, length) for s, e, _, _ in spans)


# ---------------------------------------------------------------------------------------------------------------
# 4. Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message() -> None:
    ours = FireRedVAE(CONFIGS["tiny"])  # f = 4, z_dim = 4
    with pytest.raises(ValueError, match="3 channels"):
        ours.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"multiples of 4, got 18x16"):
        ours.encode(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"x\[:, :, 0\]"):
        ours.encode(torch.zeros(1, 3, 1, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        ours.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="z_dim=4 channels"):
        ours.decode(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        ours.decode(torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="tile_overlap"):
        ours.decode(torch.zeros(1, 4, 8, 8), tile=4, tile_overlap=4)
