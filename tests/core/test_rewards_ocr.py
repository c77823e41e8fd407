"""The layout-aware OCR reward with the real OCR (RapidOCR, the ``ocr`` extra) on text this test renders.

Source: a sign reading "OPEN" in DejaVu Sans Bold. Candidates for the edit "OPEN" -> "CLOSED": the right text in
place at the old size, oversized (x2, x3), moved away, a one-letter error in place ("CLOSET"), a wrong word
("HELLO"), nothing. The rewards must come out in exactly that order, with RapidOCR's character boxes and with the
even split of line boxes that stands in for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont

pytest.importorskip("rapidocr", reason="the OCR reward needs the 'ocr' extra")
pytest.importorskip("onnxruntime", reason="the OCR reward needs the 'ocr' extra")

from firered_core.rewards.ocr_layout import (LayoutScore, SourceText, locate_source_text,  # noqa: E402
                                             ocr_layout_reward, ocr_rewards, score_candidate)
from firered_core.rewards.ocr_reader import RapidOcrReader  # noqa: E402
from firered_core.rewards.overlay import draw_layout_overlay  # noqa: E402
from firered_core.rewards.quoted_text import TextEditRequest  # noqa: E402

pytestmark = pytest.mark.slow  # ~1.5 s per OCR call on one core

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
SIZE = (640, 320)  # room for the x3 candidate in the same frame as the source
AT = (60, 60)  # where the source text sits
PX = 36  # its font size


def _font(px: int) -> ImageFont.ImageFont:
    # Debian's DejaVu when present; otherwise Pillow's own scalable default font
    return ImageFont.truetype(str(DEJAVU), px) if DEJAVU.is_file() else ImageFont.load_default(size=px)


def render(*items: tuple[str, tuple[int, int], int], size: tuple[int, int] = SIZE) -> Image.Image:
    """A light sign with dark text: items are (text, top-left, font size in px)."""
    image = Image.new("RGB", size, (236, 232, 220))
    draw = ImageDraw.Draw(image)
    for text, xy, px in items:
        draw.text(xy, text, font=_font(px), fill=(25, 25, 30))
    return image


CANDIDATES = {
    "in place": lambda: render(("CLOSED", AT, PX)),
    "x2": lambda: render(("CLOSED", (60, 40), 2 * PX)),
    "x3": lambda: render(("CLOSED", (60, 20), 3 * PX)),
    "moved": lambda: render(("CLOSED", (300, 230), PX)),
    "CLOSET": lambda: render(("CLOSET", AT, PX)),
    "HELLO": lambda: render(("HELLO", AT, PX)),
    "blank": lambda: render(),
}


@pytest.fixture(scope="module")
def reader() -> RapidOcrReader:
    return RapidOcrReader(threads=1)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return render(("OPEN", AT, PX))


@pytest.fixture(scope="module")
def located(reader: RapidOcrReader, source: Image.Image) -> SourceText:
    return locate_source_text(source, "CLOSED", old_text="OPEN", reader=reader)


@pytest.fixture(scope="module")
def scores(reader: RapidOcrReader, located: SourceText) -> dict[str, LayoutScore]:
    return {name: score_candidate(located, make(), reader=reader) for name, make in CANDIDATES.items()}


def test_source_line_comes_with_character_boxes(located: SourceText) -> None:
    assert located.box is not None and located.box.text == "OPEN" and located.expected == "CLOSED"
    assert [c.text for c in located.box.chars] == list("OPEN")
    centres = [c.center[0] for c in located.box.chars]
    assert centres == sorted(centres) and located.box.rect[0] <= centres[0] < centres[-1] <= located.box.rect[2]


def test_rewards_in_the_strict_order(scores: dict[str, LayoutScore]) -> None:
    r = {name: s.reward for name, s in scores.items()}
    assert r["in place"] > max(r["x2"], r["x3"], r["moved"]), r
    assert r["x2"] > r["x3"], r
    assert min(r["x2"], r["x3"], r["moved"]) > r["CLOSET"] > r["HELLO"] > r["blank"] == 0.0, r


def test_right_text_in_place_scores_high(scores: dict[str, LayoutScore]) -> None:
    best = scores["in place"]
    assert best.reward > 0.9 and best.text == 1.0 and best.size == 1.0 and best.paired == 6, best
    assert best.matched.text == "CLOSED" and best.iou > 0.5


def test_oversized_and_moved_lose_on_their_own_terms(scores: dict[str, LayoutScore]) -> None:
    x2, x3, moved = scores["x2"], scores["x3"], scores["moved"]
    assert x2.text == x3.text == moved.text == 1.0
    assert x3.size < x2.size < 0.35, (x2, x3)  # e^-1.84 = 0.16 for x2 in theory
    assert moved.size == 1.0 and moved.position < 0.05, moved


def test_wrong_text_is_gated(scores: dict[str, LayoutScore]) -> None:
    closet, hello = scores["CLOSET"], scores["HELLO"]
    assert closet.text == pytest.approx(5 / 6) and closet.paired == 5
    # smooth gate from 0.8: G(5/6) = 1/6, so the layout adds at most 0.4 / 6
    assert 0.6 * 5 / 6 <= closet.reward <= 0.6 * 5 / 6 + 0.4 / 6
    assert hello.text < 0.5 and hello.reward == pytest.approx(0.6 * hello.text)  # gate closed


def test_no_text_scores_zero(scores: dict[str, LayoutScore]) -> None:
    blank = scores["blank"]
    assert blank.reward == 0.0 and blank.matched is None and "no text" in blank.note


def test_line_boxes_split_evenly_keep_the_order(source: Image.Image) -> None:
    """Without the OCR's character boxes the same code path splits each line box among its characters."""
    lines_only = RapidOcrReader(threads=1, char_boxes=False)
    located = locate_source_text(source, "CLOSED", old_text="OPEN", reader=lines_only)
    assert located.box.chars == ()
    r = {name: score_candidate(located, CANDIDATES[name](), reader=lines_only)
         for name in ("in place", "x2", "CLOSET")}
    assert r["in place"].paired == 6 and r["in place"].reward > 0.9, r["in place"]
    assert r["in place"].reward > r["x2"].reward > r["CLOSET"].reward, r


def test_batch_interface_reads_each_source_once(reader: RapidOcrReader, source: Image.Image,
                                                scores: dict[str, LayoutScore]) -> None:
    calls = []

    def counting(image: Image.Image):
        calls.append(image.size)
        return reader(image)

    names = ["in place", "CLOSET", "blank"]
    request = TextEditRequest(new="CLOSED", old="OPEN")
    rewards = ocr_rewards([source] * 3, [CANDIDATES[n]() for n in names], [request] * 3, reader=counting)
    assert rewards == [scores[n].reward for n in names]
    assert len(calls) == 4  # the source once, then the three results


def test_batch_interface_checks_its_arguments(source: Image.Image) -> None:
    with pytest.raises(ValueError, match="one entry per sample"):
        ocr_rewards([source], [source, source], [TextEditRequest(new="A")])
    with pytest.raises(TypeError, match=r"requests\[0\]: expected a TextEditRequest"):
        ocr_rewards([source], [source], ['Change "OPEN" to "CLOSED"'])


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
    box = (AT[0], AT[1] + 5, AT[0] + 105, AT[1] + 35)  # a hand-drawn box around the caps: picks the OCR line
    big = render(("CLOSED", (AT[0] * 2, AT[1] * 2), PX * 2), size=(SIZE[0] * 2, SIZE[1] * 2))
    score = ocr_layout_reward(source, big, "CLOSED", source_box=box, reader=reader)
    assert score.source_box.text == "OPEN"
    assert score.reward > 0.9 and score.size == 1.0, score


def test_without_old_text_the_nearest_source_line_is_used(reader: RapidOcrReader, source: Image.Image) -> None:
    score = ocr_layout_reward(source, render(("CLOSED", AT, PX)), "CLOSED", reader=reader)
    assert score.source_box is not None and score.source_box.text == "OPEN"
    assert score.reward > 0.9, score


def test_reward_is_deterministic(reader: RapidOcrReader, located: SourceText,
                                 scores: dict[str, LayoutScore]) -> None:
    assert score_candidate(located, CANDIDATES["in place"](), reader=reader) == scores["in place"]


def test_overlay_draws_the_boxes(scores: dict[str, LayoutScore]) -> None:
    image = CANDIDATES["in place"]()
    overlay = draw_layout_overlay(image, scores["in place"])
    assert overlay.size == image.size and overlay.mode == "RGB"
    assert ImageChops.difference(overlay, image).getbbox() is not None
    assert draw_layout_overlay(render(), scores["blank"]).size == SIZE  # nothing found: still an image
