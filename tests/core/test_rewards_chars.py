"""The character level of the OCR reward on hand-made boxes: alignment, character boxes, the reference layout,
the penalties and the layout term, with values computed by hand. No OCR runs here."""

from __future__ import annotations

import math

import pytest

from firered_core.rewards.char_layout import char_boxes, layout_agreement, pair_penalties, reference_chars
from firered_core.rewards.layout_config import LayoutRewardConfig
from firered_core.rewards.ocr_layout import SourceText
from firered_core.rewards.ocr_reader import attach_chars
from firered_core.rewards.text_boxes import TextBox, box_from_rect
from firered_core.rewards.text_match import substring_alignment, substring_distance

CFG = LayoutRewardConfig()
EXACT = LayoutRewardConfig(pos_tolerance=0.0)  # every pixel of centre distance counts


def glyph(ch: str, cx: float, cy: float, h: float, w: float | None = None) -> TextBox:
    w = h if w is None else w
    return box_from_rect((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), text=ch)


def row(text: str, x0: float = 10, pitch: float = 20, cy: float = 50, h: float = 20) -> tuple[TextBox, ...]:
    """Glyphs of ``text`` with centres x0, x0 + pitch, ... on the line y = cy."""
    return tuple(glyph(ch, x0 + k * pitch, cy, h, pitch) for k, ch in enumerate(text))


# ---------------------------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------------------------


def test_alignment_pairs_identical_characters_only() -> None:
    exact = substring_alignment("closed", "closed")
    assert exact.distance == 0 and exact.pairs == tuple((i, i) for i in range(6)) and (exact.start, exact.end) == (0, 6)
    one_off = substring_alignment("closed", "closet")  # d -> t: substituted, not paired
    assert one_off.distance == 1 and one_off.pairs == tuple((i, i) for i in range(5))
    assert (one_off.start, one_off.end) == (0, 6)  # the longest substring on ties: T counts in |s_pred|


def test_alignment_finds_the_substring() -> None:
    inside = substring_alignment("abc", "xxabcxx")
    assert inside.distance == 0 and inside.pairs == ((0, 2), (1, 3), (2, 4)) and (inside.start, inside.end) == (2, 5)
    missing = substring_alignment("abcd", "abd")  # c missing
    assert missing.distance == 1 and missing.pairs == ((0, 0), (1, 1), (3, 2))
    assert substring_alignment("abc", "").pairs == () and substring_alignment("abc", "").distance == 3


@pytest.mark.parametrize("pattern, text", [("hellothere", "helloworldthere"), ("closed", "hello"),
                                           ("open", "closed"), ("kitten", "sitting"), ("a", "bbb")])
def test_alignment_distance_is_the_substring_distance(pattern: str, text: str) -> None:
    alignment = substring_alignment(pattern, text)
    assert alignment.distance == substring_distance(pattern, text)
    assert all(pattern[i] == text[j] for i, j in alignment.pairs)
    assert all(alignment.start <= j < alignment.end for _, j in alignment.pairs)


# ---------------------------------------------------------------------------------------------------------------
# Character boxes: the OCR's, else an even split
# ---------------------------------------------------------------------------------------------------------------


def test_even_split_of_a_line_box() -> None:
    line = box_from_rect((0, 0, 120, 30), text="A bC")  # 3 characters: the space has no box
    chars = char_boxes(line)
    assert [c.text for c in chars] == ["a", "b", "c"]
    assert [c.center for c in chars] == [(20, 15), (60, 15), (100, 15)]
    assert all(c.height == 30 and c.width == 40 for c in chars)


def test_ocr_character_boxes_are_used_when_they_spell_the_line() -> None:
    own = (glyph("A", 5, 15, 30, 10), glyph("B", 50, 15, 30, 10), glyph("C", 110, 15, 30, 10))
    line = TextBox(text="ABC", score=1.0, quad=box_from_rect((0, 0, 120, 30)).quad, chars=own)
    assert [c.center for c in char_boxes(line)] == [(5, 15), (50, 15), (110, 15)]
    wrong = TextBox(text="ABD", score=1.0, quad=line.quad, chars=own)  # they do not spell it: split instead
    assert [c.center for c in char_boxes(wrong)] == [(20, 15), (60, 15), (100, 15)]


def test_attach_chars_matches_entries_by_text_not_index() -> None:
    """RapidOCR leaves out the entry of a line with no character box: the next line must not take it."""
    one = box_from_rect((0, 0, 40, 20), text="AB")
    two = box_from_rect((0, 30, 40, 50), text="C D")
    corners = [[0, 30], [10, 30], [10, 50], [0, 50]]
    lines = attach_chars([one, two], [(("C", 0.9, corners), ("D", 0.8, corners))])
    assert lines[0].chars == ()
    assert [c.text for c in lines[1].chars] == ["C", "D"] and lines[1].chars[1].score == 0.8
    assert attach_chars([one], ["not a line of characters"])[0].chars == ()


# ---------------------------------------------------------------------------------------------------------------
# Reference layout, penalties, the layout term
# ---------------------------------------------------------------------------------------------------------------


def test_reference_layout_has_three_anchors() -> None:
    source = TextBox(text="OPEN", score=1.0, quad=box_from_rect((0, 40, 80, 60)).quad, chars=row("OPEN"))
    left, centre, right = reference_chars(source, ("", "CLOSED", ""))  # source centres 10..70, pitch 20
    assert [c.center[0] for c in left] == [10, 30, 50, 70, 90, 110]
    assert [c.center[0] for c in centre] == [-10, 10, 30, 50, 70, 90]  # middle 40, six characters around it
    assert [c.center[0] for c in right] == [-30, -10, 10, 30, 50, 70]
    assert all(c.center[1] == 50 and c.height == 20 for c in left)
    assert "".join(c.text for c in left) == "closed"


def test_reference_keeps_the_unchanged_words_and_pushes_them_aside() -> None:
    """"AB CD EF" with CD -> XYZ: AB and EF keep their boxes, pushed by the one extra character (20 px)."""
    chars = row("ABCDEF")  # centres 10, 30, ..., 110
    source = TextBox(text="AB CD EF", score=1.0, quad=box_from_rect((0, 40, 120, 60)).quad, chars=chars)
    left, centre, right = reference_chars(source, ("AB ", "XYZ", " EF"))
    assert [c.text for c in left] == list("abxyzef")
    assert [c.center[0] for c in left] == [10, 30, 50, 70, 90, 110, 130]  # XYZ from C's place; EF pushed right
    assert [c.center[0] for c in centre] == [0, 20, 40, 60, 80, 100, 120]  # centred on C-D's middle (60)
    assert [c.center[0] for c in right] == [-10, 10, 30, 50, 70, 90, 110]  # XYZ ends at D's place; AB pushed left
    misplaced = reference_chars(source, ("QQ ", "XYZ", ""))[0]  # the prefix is not in the line: all of it is new
    assert [c.center[0] for c in misplaced] == [10, 30, 50, 70, 90]


def test_reference_in_a_bare_rectangle_fills_it() -> None:
    (only,) = reference_chars(box_from_rect((0, 0, 100, 20)), ("", "HELLO", ""))
    assert [c.center for c in only] == [(10, 10), (30, 10), (50, 10), (70, 10), (90, 10)]


def test_pair_penalties_by_hand() -> None:
    ref = glyph("a", 100, 100, 20)
    assert pair_penalties(glyph("a", 110, 100, 20), ref, EXACT) == (pytest.approx(0.5), 0.0)  # 10 px / 20 px
    assert pair_penalties(glyph("a", 110, 100, 20), ref, CFG)[0] == 0.0  # half a glyph height is free
    assert pair_penalties(glyph("a", 100, 130, 20), ref, CFG)[0] == pytest.approx(1.0)  # 1.5 - 0.5
    slow = LayoutRewardConfig(pos_tolerance=0.0, tau_pos=3)
    assert pair_penalties(glyph("a", 100, 130, 20), ref, slow)[0] == pytest.approx(0.5)
    assert pair_penalties(glyph("a", 112, 116, 20), ref, EXACT)[0] == pytest.approx(1.0)  # 3-4-5: 20 px
    d, ds = pair_penalties(glyph("a", 100, 100, 40), ref, CFG)  # twice the size, same centre
    assert d == 0.0 and ds == pytest.approx((math.log(2) - math.log(1.15)) / 0.3)
    assert pair_penalties(glyph("a", 100, 100, 22), ref, CFG)[1] == 0.0  # +10 %: within the tolerance
    assert pair_penalties(glyph("a", 100, 100, 5), ref, CFG)[1] == 0.0  # shrinking is not over-scaling


def test_layout_term_sum_and_mean_by_hand() -> None:
    ref = row("abc")
    half_off = tuple(glyph(c.text, c.center[0] + 10, 50, 20) for c in ref)  # every centre half a glyph right
    exact = layout_agreement(ref, ref, substring_alignment("abc", "abc"), CFG)
    assert (exact.layout, exact.position, exact.size, exact.paired) == (1.0, 1.0, 1.0, 3)
    shifted = layout_agreement(half_off, ref, substring_alignment("abc", "abc"), EXACT)
    assert shifted.layout == pytest.approx(math.exp(-0.5)) and shifted.position == pytest.approx(math.exp(-0.5))
    assert layout_agreement(half_off, ref, substring_alignment("abc", "abc"), CFG).layout == 1.0  # tolerated
    wrong_letter = row("abx")  # x pairs with nothing
    summed = layout_agreement(wrong_letter, ref, substring_alignment("abc", "abx"), CFG)
    assert summed.layout == pytest.approx(2 / 3) and summed.paired == 2
    mean = LayoutRewardConfig(layout_norm="mean")
    assert layout_agreement(wrong_letter, ref, substring_alignment("abc", "abx"), mean).layout == 1.0
    short = row("ab")  # |s_pred| / |s_tgt| = 2/3 under both norms
    assert layout_agreement(short, ref, substring_alignment("abc", "ab"), mean).layout == pytest.approx(2 / 3)
    assert layout_agreement(short, ref, substring_alignment("abc", "ab"), CFG).layout == pytest.approx(2 / 3)
    longer = row("abcd")  # an extra character costs under "sum" only
    assert layout_agreement(longer, ref, substring_alignment("abc", "abcd"), CFG).layout == 1.0  # d is outside
    assert layout_agreement(row("xyz"), ref, substring_alignment("abc", "xyz"), CFG).layout == 0.0


def test_huge_glyphs_in_place_do_not_pay() -> None:
    """The reward hack the term is built against: the right text at three times the size, centred in place."""
    ref = row("abc")
    huge = tuple(glyph(c.text, 30 + (c.center[0] - 30) * 3, 50, 60, 60) for c in ref)  # centres -30, 30, 90
    scored = layout_agreement(huge, ref, substring_alignment("abc", "abc"), CFG)
    ds = (math.log(3) - math.log(1.15)) / 0.3
    # scaled about the middle glyph: the outer centres move 40 px = 2 reference glyph heights (1.5 beyond the
    # tolerance), the middle one 0
    expected = (math.exp(-ds) * (1 + 2 * math.exp(-1.5))) / 3
    assert scored.layout == pytest.approx(expected) and scored.size == pytest.approx(math.exp(-ds))
    assert scored.layout < 0.02


def test_source_text_parts_join_to_the_expected_line() -> None:
    plain = SourceText(expected="CLOSED", box=None, detections=(), size=(8, 8))
    assert plain.parts == ("", "CLOSED", "")  # not given: all of it is new
    line = SourceText(expected="HELLO THERE", box=None, detections=(), size=(8, 8), parts=("HELLO ", "THERE", ""))
    assert line.parts[1] == "THERE"
    with pytest.raises(ValueError, match="parts"):
        SourceText(expected="HELLO", box=None, detections=(), size=(8, 8), parts=("", "WORLD", ""))
