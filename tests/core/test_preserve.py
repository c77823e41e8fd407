"""``keep_unedited``: Picture 1's own pixels outside the area an edit changed (``firered_core.preserve``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.default import is_available, load_default_pipeline
from firered_core.images import to_tensor
from firered_core.preserve import PreserveConfig, blend_unedited, edited_mask
from firered_bench import generate
from firered_bench.evaluate.bench import vae_round_trip
from firered_bench.generate.generator import GeneratorConfig

from ..edit_cli import edit_with_each

needs_default = pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_the_mask_marks_the_changed_latents_grown_by_the_margin() -> None:
    source = _latents()
    result = source.clone()
    result[:, :, 3, 4] += 1.0  # one latent pixel edited
    result[:, :, 6, 1] += 0.05  # below the threshold: noise, not an edit
    mask = edited_mask(result, source, PreserveConfig(latent_threshold=0.15, dilate=1))
    assert mask is not None and mask.shape == (1, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[2:5, 3:6] = 1
    assert torch.equal(mask[0, 0], expected)
    no_margin = edited_mask(result, source, PreserveConfig(latent_threshold=0.15, dilate=0))
    assert no_margin is not None and no_margin.sum() == 1 and no_margin[0, 0, 3, 4] == 1
    # the Qwen-Image VAE's 5-D layout (one frame) is read the same way
    five_d = edited_mask(result[:, :, None], source[:, :, None], PreserveConfig(latent_threshold=0.15, dilate=1))
    assert five_d is not None and torch.equal(five_d, mask)


def test_a_whole_image_edit_is_left_alone() -> None:
    source = _latents()
    result = source.clone()
    result[:, :, :5] += 1.0  # 5 of 8 rows changed: 62.5 % of the latents
    assert edited_mask(result, source, PreserveConfig(max_edited_fraction=0.5)) is None
    assert edited_mask(result, source, PreserveConfig(max_edited_fraction=0.7)) is not None


def test_the_blend_keeps_the_source_exactly_outside_and_the_result_inside() -> None:
    result = torch.rand(1, 3, 32, 32) * 2 - 1
    source = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 2:5, 3:6] = 1  # pixels 8..19 x 12..23 at 4x
    out = blend_unedited(result, source, mask, feather=3)
    inside = (slice(None), slice(None), slice(9, 19), slice(13, 23))
    assert torch.equal(out[inside], result[inside])
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[7:21, 11:25] = False  # the feathered edge reaches one pixel beyond the mask
    assert torch.equal(out[..., outside], source[..., outside])
    edge = out[0, :, 8, 12:24]  # the mask's first row: between the two
    assert not torch.equal(edge, result[0, :, 8, 12:24]) and not torch.equal(edge, source[0, :, 8, 12:24])
    hard = blend_unedited(result, source, mask, feather=1)
    assert torch.equal(hard[..., 8:20, 12:24], result[..., 8:20, 12:24])



# --- kornia against the pooling formulas it replaced (kept here as the reference) ----------------------------------

def _reference_dilate(edited: torch.Tensor, dilate: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(edited, kernel_size=2 * dilate + 1, stride=1, padding=dilate)


def _reference_feather(weight: torch.Tensor, feather: int) -> torch.Tensor:
    before, after = (feather - 1) // 2, feather // 2
    padded = torch.nn.functional.pad(weight, (before, after, before, after), mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, kernel_size=feather, stride=1)


def _weight(mask: torch.Tensor, feather: int, scale: int = 1) -> torch.Tensor:
    """The blend's weight itself, at ``scale`` pixels per mask pixel: ``weight * 1 + (1 - weight) * 0`` is exact."""
    ones = torch.ones(1, 3, mask.shape[-2] * scale, mask.shape[-1] * scale)
    return blend_unedited(ones, torch.zeros_like(ones), mask, feather)[:, :1]


def test_the_kornia_dilation_is_the_max_pool_it_replaced() -> None:
    """Bit-equal: a maximum over a 0/1 mask has no rounding, and neither pads anything in from the border."""
    for seed in range(12):
        source = _latents(seed)
        result = source + (torch.rand(source.shape, generator=torch.Generator().manual_seed(seed)) > 0.97) * 1.0
        plain = edited_mask(result, source, PreserveConfig(dilate=0, max_edited_fraction=1.0))
        assert plain is not None
        for dilate in (1, 2, 3):
            grown = edited_mask(result, source, PreserveConfig(dilate=dilate, max_edited_fraction=1.0))
            assert grown is not None and torch.equal(grown, _reference_dilate(plain, dilate))


def test_the_kornia_feather_is_the_average_it_replaced() -> None:
    """Bit-equal at the default feather 3, shown on every 3x3 pattern a 0/1 mask can hold; other widths agree
    within the rounding of summing k * k float32 taps of 1 / (k * k), k * k * 2**-24 (measured: at most 4.8e-7)."""
    patterns = torch.tensor([[(n >> i) & 1 for i in range(9)] for n in range(512)], dtype=torch.float32)
    tiles = patterns.view(32, 16, 3, 3).permute(0, 2, 1, 3).reshape(1, 1, 96, 48)  # every pattern is a window
    assert torch.equal(_weight(tiles, 3), _reference_feather(tiles, 3))
    for seed in range(4):
        mask = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) > 0.6).float()
        pixels = torch.nn.functional.interpolate(mask, scale_factor=4, mode="nearest")
        for feather in range(2, 10):
            tolerance = feather * feather * 2**-24
            assert (_weight(mask, feather, 4) - _reference_feather(pixels, feather)).abs().max() <= tolerance
        assert torch.equal(_weight(mask, 3, 4), _reference_feather(pixels, 3))

def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="latent_threshold"):
        PreserveConfig(latent_threshold=0)
    with pytest.raises(ValueError, match="max_edited_fraction"):
        PreserveConfig(max_edited_fraction=1.5)
    with pytest.raises(ValueError, match="feather"):
        PreserveConfig(feather=0)
    with pytest.raises(ValueError, match="integers"):
        PreserveConfig(dilate=1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        edited_mask(_latents(), torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match="whole multiple"):
        blend_unedited(torch.zeros(1, 3, 30, 30), torch.zeros(1, 3, 30, 30), torch.zeros(1, 1, 8, 8))


def test_defaults_json_turns_it_on() -> None:
    """``keep_unedited`` in a model folder's defaults.json: true, or an object of PreserveConfig fields."""
    from firered_core.loading import ModelDefaults

    assert ModelDefaults.from_dict({"keep_unedited": True}).keep_unedited == PreserveConfig()
    custom = ModelDefaults.from_dict({"keep_unedited": {"latent_threshold": 0.3, "dilate": 2}})
    assert custom.keep_unedited == PreserveConfig(latent_threshold=0.3, dilate=2)
    assert ModelDefaults.from_dict({}).keep_unedited is None
    assert ModelDefaults.from_dict({"keep_unedited": False}).keep_unedited is None
    with pytest.raises(ValueError, match="defaults.json: keep_unedited must be true, false or an object"):
        ModelDefaults.from_dict({"keep_unedited": "yes"})
    with pytest.raises(ValueError, match="keep_unedited.*radius"):
        ModelDefaults.from_dict({"keep_unedited": {"radius": 2}})


def test_the_old_name_in_defaults_json_means_the_same() -> None:
    """Folders written before the rename (the embedded default's own, in older installs) say preserve_unedited."""
    from firered_core.loading import ModelDefaults

    old = ModelDefaults.from_dict({"preserve_unedited": {"dilate": 2}})
    assert old == ModelDefaults.from_dict({"keep_unedited": {"dilate": 2}}) and old.keep_unedited.dilate == 2
    assert ModelDefaults.from_dict({"preserve_unedited": True}).keep_unedited == PreserveConfig()
    with pytest.raises(ValueError, match="'preserve_unedited' is the old name of 'keep_unedited'"):
        ModelDefaults.from_dict({"preserve_unedited": True, "keep_unedited": False})


def _local_edit():  # noqa: ANN202 - a held-out "remove" sample of the synthetic split, 64x64
    return next(iter(generate("heldout", 1, seed=3, config=GeneratorConfig(tasks=("remove",)))))


@needs_default
def test_the_embedded_model_keeps_picture_1_outside_its_edit() -> None:
    pipe = load_default_pipeline()
    assert pipe.keep_unedited is not None  # its defaults.json turns it on
    sample = _local_edit()
    source = sample.sources[0]
    kept = pipe.edit([source], sample.instruction, steps=8, true_cfg_scale=1.0, seed=0)
    plain = pipe.edit([source], sample.instruction, steps=8, true_cfg_scale=1.0, seed=0, keep_unedited=False)
    assert kept.keep_unedited and not plain.keep_unedited
    assert torch.equal(kept.latents, plain.latents)  # the same sampling; only the pixels differ
    # Picture 1 was encoded at the output's size for the token sequence: the step reuses those latents
    encode, calls = pipe.vae.encode, []
    pipe.vae.encode = lambda pixels: calls.append(pixels.shape) or encode(pixels)
    try:
        again = pipe.edit([source], sample.instruction, steps=8, true_cfg_scale=1.0, seed=0)
    finally:
        del pipe.vae.encode
    assert calls == [(1, 3, 64, 64)] and np.array_equal(np.asarray(again.image), np.asarray(kept.image))

    with torch.inference_mode():
        source_latents = pipe.vae.encode(to_tensor(source, 64, 64))
    mask = edited_mask(kept.latents, source_latents, pipe.keep_unedited)
    assert mask is not None and 0 < mask.mean() < 0.5
    weight = torch.nn.functional.interpolate(mask, size=(64, 64), mode="nearest")[0, 0]
    grown = torch.nn.functional.max_pool2d(weight[None, None], 3, 1, 1)[0, 0].bool().numpy()
    core = (-torch.nn.functional.max_pool2d(-weight[None, None], 3, 1, 1))[0, 0].bool().numpy()
    kept_px, plain_px, source_px = (np.asarray(im, np.int16) for im in (kept.image, plain.image, source))
    assert np.array_equal(kept_px[~grown], source_px[~grown])  # Picture 1's own pixels, exactly
    assert np.array_equal(kept_px[core], plain_px[core])  # the model's edit, untouched
    assert not np.array_equal(plain_px[~grown], source_px[~grown])  # without it, the VAE's round trip shows


@needs_default
def test_a_whole_image_edit_text_to_image_and_another_aspect_are_returned_as_they_are() -> None:
    pipe = load_default_pipeline()
    sample = _local_edit()
    source = sample.sources[0]
    # any share of edited latents counts as a whole-image edit under this config: the decoded result is kept
    whole = PreserveConfig(max_edited_fraction=1e-6)
    result = pipe.edit([source], sample.instruction, steps=8, true_cfg_scale=1.0, seed=0, keep_unedited=whole)
    plain = pipe.edit([source], sample.instruction, steps=8, true_cfg_scale=1.0, seed=0, keep_unedited=False)
    assert not result.keep_unedited and np.array_equal(np.asarray(result.image), np.asarray(plain.image))
    drawn = pipe.edit([], "Draw a red circle in the middle on a white background.", steps=4, true_cfg_scale=1.0,
                      seed=0)
    assert not drawn.keep_unedited
    wide = Image.new("RGB", (128, 64), (20, 120, 200))  # another aspect than the 64x64 output asked for
    off = pipe.edit([wide], "Make the background red.", steps=4, true_cfg_scale=1.0, seed=0, width=64, height=64)
    assert not off.keep_unedited
    with pytest.raises(TypeError, match="keep_unedited"):
        pipe.edit([source], sample.instruction, steps=1, keep_unedited="yes")


@needs_default
def test_the_benchmark_ceiling_gets_the_same_treatment() -> None:
    pipe = load_default_pipeline()
    sample = _local_edit()
    source, target = sample.sources[0], sample.target
    plain = np.asarray(vae_round_trip(pipe.vae, target), np.int16)
    kept = np.asarray(vae_round_trip(pipe.vae, target, source, pipe.keep_unedited), np.int16)
    src, tgt = np.asarray(source, np.int16), np.asarray(target, np.int16)
    same = (src == tgt).all(axis=-1)
    # where the target is Picture 1, the kept round trip is mostly Picture 1 exactly; the plain one rarely is
    assert (kept[same] == src[same]).all(axis=-1).mean() > 0.8 > (plain[same] == src[same]).all(axis=-1).mean()
    assert np.array_equal(np.asarray(vae_round_trip(pipe.vae, target, source, None)), plain.astype(np.uint8))


@needs_default
def test_the_cli_switch_and_the_written_metadata(tmp_path: Path) -> None:
    sample = _local_edit()
    outputs = edit_with_each(sample, tmp_path, ("--keep-unedited", "--no-keep-unedited"), "keep_unedited")
    assert outputs["--keep-unedited"][0] is True and outputs["--no-keep-unedited"][0] is False
    src = np.asarray(sample.sources[0])
    exact = {flag: (px == src).all(axis=-1).mean() for flag, (_, px) in outputs.items()}
    assert exact["--keep-unedited"] > 0.5 > exact["--no-keep-unedited"]



def test_the_benchmark_says_whether_it_was_on() -> None:
    from firered_bench.evaluate.report import settings_line

    summary = {"steps": 40, "true_cfg_scale": 1.0, "seed": 1, "per_category": 20}
    assert settings_line({**summary, "keep_unedited": True}) == (
        "Settings: 40 Euler steps, true CFG 1, keep Picture 1 outside the edit (keep_unedited) on, held-out "
        "seed 1, 20 per category.")
    assert "(keep_unedited) off" in settings_line(summary)
    assert settings_line({**summary, "sampler": "stochastic"}).startswith("Settings: 40 stochastic steps,")
