"""Size mode "match" (Picture 1's own size, aligned with it) and the reference areas chosen per call, on the tiny
random pipeline: the sizes the pipeline encodes and makes, what is refused before any torch work, and that the
defaults leave every result bit for bit as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.images import calculate_dimensions, to_tensor
from firered_core.preserve import PreserveConfig
from firered_core.sizing import (MAX_AREA, MIN_AREA, check_area, check_size_mode, match_canvas)
from tests.node_fixtures import REF_AREA, tiny_pipeline

UNIT = 8  # the tiny pipeline's token size: 4x VAE compression x patch 2


def _picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


# --- sizing -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, canvas", [((64, 64), (64, 64)), ((57, 41), (64, 48)), ((17, 16), (24, 16)),
                                          ((123, 77), (128, 80))])
def test_the_match_canvas_rounds_each_side_up_to_the_token_size(size, canvas) -> None:
    assert match_canvas(UNIT, *size) == canvas
    assert all(0 <= c - s < UNIT for c, s in zip(canvas, size))  # padding below one token


def test_the_match_canvas_refuses_requested_sides_and_sides_over_the_limit() -> None:
    with pytest.raises(ValueError, match="takes the output size from Picture 1: leave width and height unset"):
        match_canvas(UNIT, 64, 64, width_given=64)
    with pytest.raises(ValueError, match="takes the output size from Picture 1"):
        match_canvas(UNIT, 64, 64, height_given=32)
    with pytest.raises(ValueError, match=r"Picture 1 is 8193x16, a side over this model's limit of 8192 px"):
        match_canvas(UNIT, 8193, 16)


def test_areas_and_size_modes_are_checked() -> None:
    assert check_area("vae_ref_area", None) is None
    assert check_area("vae_ref_area", MIN_AREA) == MIN_AREA and check_area("x", MAX_AREA) == MAX_AREA
    for bad in (MIN_AREA - 1, MAX_AREA + 1, 4096.0, True, "4096"):
        with pytest.raises(ValueError, match=r"vae_ref_area must be an integer number of pixels from 1024 \(32x32\)"):
            check_area("vae_ref_area", bad)
    assert check_size_mode("match") == "match"
    with pytest.raises(ValueError, match="size_mode must be one of area, match, got 'fit'"):
        check_size_mode("fit")


# --- the pipeline -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height", [(64, 64), (57, 41), (30, 52)])
def test_match_encodes_picture_1_unresized_on_an_edge_padded_canvas(pipe, width: int, height: int) -> None:
    picture, other = _picture(width, height), _picture(40, 24, seed=1)
    with torch.inference_mode():
        prepared = pipe._prepare([picture, other], None, None, None, "match")
    canvas_w, canvas_h = match_canvas(UNIT, width, height)
    assert (prepared.width, prepared.height, prepared.crop) == (canvas_w, canvas_h, (width, height))
    other_w, other_h = calculate_dimensions(REF_AREA, 40 / 24)  # later references: the VAE area as before
    assert prepared.img_shapes == [(1, canvas_h // UNIT, canvas_w // UNIT), (1, canvas_h // UNIT, canvas_w // UNIT),
                                   (1, other_h // UNIT, other_w // UNIT)]
    canvas = prepared.first_ref_canvas
    assert tuple(canvas.shape) == (1, 3, canvas_h, canvas_w)
    assert torch.equal(canvas[..., :height, :width], to_tensor(picture, width, height))  # Picture 1's own pixels
    assert torch.equal(canvas[..., :height, width:], canvas[..., :height, width - 1:width].expand(
        -1, -1, -1, canvas_w - width))  # the padding repeats the last column (and row)
    assert torch.equal(canvas[..., height:, :], canvas[..., height - 1:height, :].expand(-1, -1, canvas_h - height, -1))


@pytest.mark.parametrize("width, height", [(57, 41), (64, 64), (33, 70)])
def test_match_gives_picture_1s_exact_size_and_pixel_grid(pipe, width: int, height: int) -> None:
    """With everything counted as unedited (a threshold no latent difference reaches), keep_unedited hands back
    Picture 1 itself: the crop takes exactly the padded canvas's Picture 1 part, no shift, no resampling."""
    picture = _picture(width, height, seed=2)
    result = pipe.edit([picture], "make it blue", steps=1, size_mode="match",
                       keep_unedited=PreserveConfig(latent_threshold=1e9))
    assert result.image.size == (width, height) and (result.width, result.height) == (width, height)
    assert result.size_mode == "match" and result.keep_unedited
    assert tuple(result.latents.shape[-2:]) == tuple(s // 4 for s in reversed(match_canvas(UNIT, width, height)))
    assert np.array_equal(np.asarray(result.image), np.asarray(picture))
    if (width, height) != (64, 64):  # the model's own area: there both modes make Picture 1's size
        area = pipe.edit([picture], "make it blue", steps=1, keep_unedited=PreserveConfig(latent_threshold=1e9))
        assert area.image.size != (width, height)


def test_without_keep_unedited_match_is_the_model_at_picture_1s_canvas(pipe) -> None:
    picture = _picture(57, 41, seed=3)
    result = pipe.edit([picture], "make it blue", steps=2, size_mode="match", keep_unedited=False)
    assert result.image.size == (57, 41) and not result.keep_unedited
    full = pipe.vae.decode(result.latents.to(torch.float32))  # the decoded canvas, before the crop
    from firered_core.images import to_pil

    assert np.array_equal(np.asarray(result.image), np.asarray(to_pil(full))[:41, :57])


def test_the_vae_reference_area_follows_the_setting(pipe) -> None:
    picture = _picture(96, 48)
    for area in (None, 32 * 32, 96 * 96):
        with torch.inference_mode():
            prepared = pipe._prepare([picture], 32, 32, None, "area", area)
        ref_w, ref_h = calculate_dimensions(area or REF_AREA, 2.0)
        assert prepared.img_shapes[1] == (1, ref_h // UNIT, ref_w // UNIT)


def test_the_defaults_give_bit_identical_results(pipe) -> None:
    picture = _picture(50, 70, seed=4)
    base = pipe.edit([picture], "make it blue", steps=2, seed=7)
    same = pipe.edit([picture], "make it blue", steps=2, seed=7, size_mode="area", vae_ref_area=REF_AREA,
                     cond_ref_area=None)
    assert torch.equal(base.latents, same.latents) and base.image.tobytes() == same.image.tobytes()
    assert base.size_mode == "area"
    other = pipe.edit([picture], "make it blue", steps=2, seed=7, vae_ref_area=32 * 32)
    assert not torch.equal(base.latents, other.latents)  # the setting reaches the model


@pytest.mark.parametrize("options, message", [
    ({"size_mode": "fit"}, "size_mode must be one of area, match"),
    ({"size_mode": "match", "width": 64}, "takes the output size from Picture 1"),
    ({"vae_ref_area": 100}, "vae_ref_area must be an integer number of pixels from 1024"),
    ({"cond_ref_area": 2.5}, "cond_ref_area must be an integer number of pixels"),
    ({"cond_ref_area": 4096}, "the condition encoder StubEncoder has no setting for the area"),
    ({"size_mode": "match", "images": []}, "size_mode='match' follows Picture 1, but no reference image"),
])
def test_bad_settings_are_refused_before_any_torch_work(pipe, monkeypatch, options: dict, message: str) -> None:
    monkeypatch.setattr(pipe.vae, "encode", lambda *a, **k: pytest.fail("a reference was encoded"))
    calls = len(pipe.encoder.calls)
    images = options.pop("images", [_picture(40, 40)])
    with pytest.raises(ValueError, match=message):
        pipe.edit(images, "make it blue", steps=1, **options)
    assert len(pipe.encoder.calls) == calls


def test_the_condition_area_reaches_an_encoder_that_reads_images(pipe) -> None:
    """The pipeline passes ``image_area`` only when set, to encoders whose ``encode`` takes it."""
    seen: list[int | None] = []
    stub = pipe.encoder

    class AreaEncoder:
        dim = stub.dim

        def encode(self, prompts, images, *, image_area=None):
            seen.append(image_area)
            return stub.encode(prompts, images)

        def to(self, device=None, dtype=None):
            return self

    pipe.encoder = AreaEncoder()
    try:
        pipe.edit([_picture(40, 40)], "make it blue", steps=1, negative_prompt=None)
        pipe.edit([_picture(40, 40)], "make it blue", steps=1, negative_prompt=None, cond_ref_area=256 * 256)
    finally:
        pipe.encoder = stub
    assert seen == [None, 256 * 256]


def test_the_qwen_vl_encoder_sees_references_at_the_area_asked_for() -> None:
    """The real (tiny, random) Qwen2.5-VL encoder: the image grid follows ``image_area``; the default is the
    release's 384^2, bit for bit."""
    fixtures = pytest.importorskip("tests.encoder_fixtures")
    from firered_core.encoder import CONDITION_IMAGE_AREA, EDIT_TEMPLATE, QwenVLConditionEncoder, condition_size
    from firered_core.encoder.qwen_processor import QwenVLProcessor, build_image_processor

    encoder = QwenVLConditionEncoder(fixtures.build_tiny_qwen_vl(seed=0),
                                     QwenVLProcessor(fixtures.offline_tokenizer(), build_image_processor()))
    picture = _picture(300, 200)
    for area in (256 * 256, CONDITION_IMAGE_AREA, 512 * 512):
        grid = encoder._edit_inputs(EDIT_TEMPLATE, ["x"], [picture], area)["image_grid_thw"]
        width, height = condition_size(300, 200, area)
        assert grid.tolist() == [[1, round(height / 28) * 2, round(width / 28) * 2]]  # 14-px patches, merged 2x2
    default = encoder.encode(["make it blue"], [picture])
    same = encoder.encode(["make it blue"], [picture], image_area=CONDITION_IMAGE_AREA)
    small = encoder.encode(["make it blue"], [picture], image_area=256 * 256)
    assert torch.equal(default.embeds, same.embeds) and small.seq_len < default.seq_len
