"""The layout-aware OCR reward with the real OCR (RapidOCR, the ``ocr`` extra) on text this test renders.

Source: "HELLO" in DejaVu Sans Bold. Candidates: the new word "WORLD" in place, a wrong word in place, "WORLD"
moved far away, at twice and at half the size, nothing at all. The reward must put the correct in-place edit on
top, give a wrong word little, and gate the moved / resized ones down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont

pytest.importorskip("rapidocr", reason="the OCR reward needs the 'ocr' extra")
pytest.importorskip("onnxruntime", reason="the OCR reward needs the 'ocr' extra")

from firered_core.rewards.ocr_layout import (LayoutScore, locate_source_text, ocr_layout_reward,  # noqa: E402
                                             score_candidate)
from firered_core.rewards.ocr_reader import RapidOcrReader  # noqa: E402
from firered_core.rewards.overlay import draw_layout_overlay  # noqa: E402

pytestmark = pytest.mark.slow  # ~1.5 s per OCR call on one core

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
SIZE = (320, 160)
AT = (40, 50)  # where the source text sits
PX = 36  # its font size


def _font(px: int) -> ImageFont.ImageFont:
    # Debian's DejaVu when present; otherwise Pillow's own scalable default font
    return ImageFont.truetype(str(DEJAVU), px) if DEJAVU.is_file() else ImageFont.load_default(size=px)


def render(*items: tuple[str, tuple[int, int], int], size: tuple[int, int] = SIZE) -> Image.Image:
    """A light card with dark text: items are (text, top-left, font size in px)."""
    image = Image.new("RGB", size, (236, 232, 220))
    draw = ImageDraw.Draw(image)
    for text, xy, px in items:
        draw.text(xy, text, font=_font(px), fill=(25, 25, 30))
    return image


@pytest.fixture(scope="module")
def reader() -> RapidOcrReader:
    return RapidOcrReader(threads=1)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return render(("HELLO", AT, PX))


@pytest.fixture(scope="module")
def scores(reader: RapidOcrReader, source: Image.Image) -> dict[str, LayoutScore]:
    located = locate_source_text(source, "WORLD", old_text="HELLO", reader=reader)
    assert located.box is not None and located.box.text == "HELLO" and located.expected == "WORLD"
    candidates = {
        "in place": render(("WORLD", AT, PX)),
        "wrong word": render(("PLANE", AT, PX)),
        "unchanged": source,
        "moved far": render(("WORLD", (150, 110), PX)),
        "twice the size": render(("WORLD", (10, 30), 2 * PX)),
        "half the size": render(("WORLD", (40, 60), PX // 2)),
        "blank": render(),
    }
    return {name: score_candidate(located, image, reader=reader) for name, image in candidates.items()}


def test_correct_text_in_place_scores_high(scores: dict[str, LayoutScore]) -> None:
    best = scores["in place"]
    assert best.reward > 0.9, best
    assert best.text == 1.0 and best.position > 0.9 and best.size == 1.0
    assert best.iou > 0.6
    assert best.matched.text == "WORLD"
    assert max(scores, key=lambda name: scores[name].reward) == "in place"


def test_wrong_or_unchanged_text_scores_low(scores: dict[str, LayoutScore]) -> None:
    for name in ("wrong word", "unchanged"):
        assert scores[name].text < 0.5, (name, scores[name])
        assert scores[name].reward < 0.3, (name, scores[name])


def test_right_text_moved_or_resized_is_gated_down(scores: dict[str, LayoutScore]) -> None:
    top = scores["in place"].reward
    moved = scores["moved far"]
    assert moved.text == 1.0 and moved.position < 0.2 and moved.reward < 0.6 < top
    for name in ("twice the size", "half the size"):
        s = scores[name]
        assert s.text == 1.0 and s.size < 0.5, (name, s)
        assert s.reward < 0.75 < top, (name, s)


def test_no_text_scores_zero(scores: dict[str, LayoutScore]) -> None:
    blank = scores["blank"]
    assert blank.reward == 0.0 and blank.matched is None and "no text" in blank.note


def test_old_text_inside_a_line_sets_the_expected_line(reader: RapidOcrReader) -> None:
    source = render(("HELLO WORLD", (20, 50), 30))
    located = locate_source_text(source, "THERE", old_text="WORLD", reader=reader)
    assert located.expected == "HELLO THERE"
    good = score_candidate(located, render(("HELLO THERE", (20, 50), 30)), reader=reader)
    kept_old = score_candidate(located, render(("HELLO WORLD THERE", (20, 50), 30)), reader=reader)
    assert good.reward > 0.9, good
    assert kept_old.reward < good.reward - 0.2, kept_old


def test_given_source_box_and_a_larger_candidate(reader: RapidOcrReader, source: Image.Image) -> None:
    """The pipeline's output is usually larger than the source: source geometry is rescaled, not compared raw."""
    box = (AT[0], AT[1] + 5, AT[0] + 125, AT[1] + 35)  # a hand-drawn box around the caps: picks the OCR line
    big = render(("WORLD", (AT[0] * 2, AT[1] * 2), PX * 2), size=(SIZE[0] * 2, SIZE[1] * 2))
    score = ocr_layout_reward(source, big, "WORLD", source_box=box, reader=reader)
    assert score.source_box.text == "HELLO"
    assert score.reward > 0.9 and score.size == 1.0, score


def test_without_old_text_the_nearest_source_line_is_used(reader: RapidOcrReader, source: Image.Image) -> None:
    score = ocr_layout_reward(source, render(("WORLD", AT, PX)), "WORLD", reader=reader)
    assert score.source_box is not None and score.source_box.text == "HELLO"
    assert score.reward > 0.9, score


def test_reward_is_deterministic(reader: RapidOcrReader, source: Image.Image,
                                 scores: dict[str, LayoutScore]) -> None:
    located = locate_source_text(source, "WORLD", old_text="HELLO", reader=reader)
    again = score_candidate(located, render(("WORLD", AT, PX)), reader=reader)
    assert again == scores["in place"]


def test_overlay_draws_the_boxes(scores: dict[str, LayoutScore]) -> None:
    image = render(("WORLD", AT, PX))
    overlay = draw_layout_overlay(image, scores["in place"])
    assert overlay.size == image.size and overlay.mode == "RGB"
    assert ImageChops.difference(overlay, image).getbbox() is not None
    assert draw_layout_overlay(render(), scores["blank"]).size == SIZE  # nothing found: still an image
