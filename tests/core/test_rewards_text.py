"""The pure parts of the OCR reward: quoted text in instructions, edit distances, box geometry, the formula.

No OCR runs here (see test_rewards_ocr.py for the reward on real OCR).
"""

from __future__ import annotations

import math
import sys

import pytest

from firered_core.rewards.extras import MissingExtraError, import_extra
from firered_core.rewards.ocr_layout import LayoutRewardConfig, combine_terms
from firered_core.rewards.quoted_text import TextEditRequest, parse_text_edit, quoted_strings
from firered_core.rewards.text_boxes import TextBox, box_from_rect, box_iou, scale_box
from firered_core.rewards.text_match import levenshtein, normalise_text, substring_distance, text_accuracy

# ---------------------------------------------------------------------------------------------------------------
# Quoted text
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instruction, new", [
    ('Change the sign to "OPEN"', "OPEN"),
    ("Change the sign to 'OPEN'", "OPEN"),
    ("Change the sign to \u201cOPEN 24/7\u201d", "OPEN 24/7"),
    ("Write \u2018Cafe\u2019 on the cup", "Cafe"),
    ("\u628a\u6807\u9898\u6539\u6210\u300c\u4fc3\u9500\u300d", "\u4fc3\u9500"),
    ("\u5c01\u9762\u5199\u4e0a\u300a\u897f\u6e38\u8bb0\u300b", "\u897f\u6e38\u8bb0"),
    ("\u5c06\u6587\u5b57\u6539\u4e3a\u2018\u65b0\u54c1\u2019", "\u65b0\u54c1"),
    ("Set the title to \uff02SALE\uff02", "SALE"),
    ("Don't move it, just write 'HELLO' on the board", "HELLO"),
    ("It\u2019s fine: write \u2018HELLO\u2019 there", "HELLO"),
    ('Write "  spaced  " please', "spaced"),
])
def test_one_quoted_string_is_the_new_text(instruction: str, new: str) -> None:
    assert parse_text_edit(instruction) == TextEditRequest(new=new)


@pytest.mark.parametrize("instruction, old, new", [
    ('Replace "SALE" with "NEW"', "SALE", "NEW"),
    ("Change 'Hello' to 'Goodbye'", "Hello", "Goodbye"),
    ('Change the text "A" to read "B"', "A", "B"),
    ('"OPEN" -> "CLOSED"', "OPEN", "CLOSED"),
    ("\u628a\u201c\u4fc3\u9500\u201d\u6539\u6210\u201c\u65b0\u54c1\u201d", "\u4fc3\u9500", "\u65b0\u54c1"),
    ("\u5c06\u300c\u5f00\u95e8\u300d\u66ff\u6362\u4e3a\u300c\u5173\u95e8\u300d", "\u5f00\u95e8", "\u5173\u95e8"),
    ("\u628a\u300a\u6625\u300b\u6362\u6210\u300a\u590f\u300b", "\u6625", "\u590f"),
])
def test_replacement_gives_old_and_new(instruction: str, old: str, new: str) -> None:
    assert parse_text_edit(instruction) == TextEditRequest(new=new, old=old)


def test_two_quotes_without_a_replacement_word_keep_the_first_as_new() -> None:
    assert parse_text_edit('Add "OPEN" next to "CAFE"') == TextEditRequest(new="OPEN")


@pytest.mark.parametrize("instruction", ["Make the sky purple", "Write it's done", 'Empty "" quotes', "\u201c \u201d",
                                         ""])
def test_nothing_quoted_gives_none(instruction: str) -> None:
    assert parse_text_edit(instruction) is None


def test_quoted_strings_are_in_order_with_spans() -> None:
    text = "a \u300cX\u300d b 'Y' c \"Z\""
    found = quoted_strings(text)
    assert [q[0] for q in found] == ["X", "Y", "Z"]
    assert [text[s:e] for _, s, e in found] == ["\u300cX\u300d", "'Y'", '"Z"']


# ---------------------------------------------------------------------------------------------------------------
# Text distances
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
                                     ("\u4fc3\u9500", "\u4fc3\u9500", 0)])
def test_levenshtein(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == levenshtein(b, a) == d


def test_substring_distance_is_free_outside_the_match() -> None:
    assert substring_distance("world", "hello world!") == 0
    assert substring_distance("world", "hello wxrld") == 1
    assert substring_distance("world", "") == 5
    assert substring_distance("", "anything") == 0


def test_text_accuracy() -> None:
    assert text_accuracy("WORLD", "WORLD") == 1.0
    assert text_accuracy("WORLD", "hello world") == 1.0  # substring credit, case ignored
    assert text_accuracy("WORLD", "W O R L D") == 1.0  # spaces ignored
    assert text_accuracy("WORLD", "WORLD", ignore_case=False) == 1.0
    assert text_accuracy("WORLD", "world", ignore_case=False) == 0.0
    assert text_accuracy("WORLD", "WORD") == pytest.approx(0.8)
    assert text_accuracy("WORLD", "") == 0.0
    assert text_accuracy("AB", "XYZXYZXYZ") == 0.0  # clipped at 0
    assert text_accuracy("\uff33\uff21\uff2c\uff25", "SALE") == 1.0  # full-width letters (NFKC)


def test_normalise_text() -> None:
    assert normalise_text("  Hello \n World ") == "helloworld"
    assert normalise_text("  Hello \n World ", ignore_spaces=False, ignore_case=False) == "Hello World"


# ---------------------------------------------------------------------------------------------------------------
# Geometry and the formula
# ---------------------------------------------------------------------------------------------------------------

SOURCE = box_from_rect((100, 100, 300, 140))  # a 200 x 40 line


def test_box_measures() -> None:
    assert SOURCE.center == (200, 120) and SOURCE.height == 40 and SOURCE.width == 200
    tilted = TextBox("x", 1.0, ((0, 10), (30, 0), (40, 30), (10, 40)))
    assert tilted.height == pytest.approx(math.hypot(10, 30))
    assert scale_box(SOURCE, 2, 0.5).rect == (200, 50, 600, 70)
    with pytest.raises(ValueError, match="empty"):
        box_from_rect((5, 5, 5, 10))


def test_iou() -> None:
    assert box_iou(SOURCE, SOURCE) == 1.0
    assert box_iou(SOURCE, box_from_rect((200, 100, 400, 140))) == pytest.approx(1 / 3)
    assert box_iou(SOURCE, box_from_rect((0, 0, 10, 10))) == 0.0


def test_combine_terms() -> None:
    cfg = LayoutRewardConfig(w_text=0.5, w_layout=0.5, gate=0.5)
    assert combine_terms(1.0, 1.0, cfg) == 1.0
    assert combine_terms(1.0, 0.0, cfg) == 0.5
    assert combine_terms(0.4, 1.0, cfg) == pytest.approx(0.2)  # gate closed below 0.5
    assert combine_terms(0.75, 1.0, cfg) == pytest.approx(0.5 * 0.75 + 0.5 * 0.5)
    assert combine_terms(0.6, None, cfg) == 0.6  # no layout to agree with
    default = LayoutRewardConfig()  # 0.6 / 0.4, smooth gate from 0.8
    assert combine_terms(0.9, 1.0, default) == pytest.approx(0.6 * 0.9 + 0.4 * 0.5)
    hard = LayoutRewardConfig(gate_mode="hard")
    assert combine_terms(0.8, 0.5, hard) == pytest.approx(0.6 * 0.8 + 0.4 * 0.5)
    assert combine_terms(0.79, 0.5, hard) == pytest.approx(0.6 * 0.79)


@pytest.mark.parametrize("field, value", [("gate", 1.0), ("w_text", -1), ("gate_mode", "soft"),
                                          ("layout_norm", "max"), ("tau_pos", 0), ("tau_size", -1),
                                          ("size_tolerance", -0.1), ("pos_tolerance", -1),
                                          ("min_source_match", 2)])
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LayoutRewardConfig(**{field: value})
    with pytest.raises(ValueError, match="w_text"):
        LayoutRewardConfig(w_text=0, w_layout=0)


def test_missing_extra_names_it() -> None:
    with pytest.raises(MissingExtraError, match=r"comfyui-firered\[ocr\]"):
        import_extra("firered_no_such_module", "ocr", "The OCR reward")


def test_readers_report_their_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rapidocr / dlib the first call (not the import, not the constructor) names the extra."""
    from PIL import Image

    from firered_core.rewards.identity import DlibFaceEmbedder
    from firered_core.rewards.ocr_reader import RapidOcrReader

    monkeypatch.setitem(sys.modules, "rapidocr", None)  # makes `import rapidocr` fail
    monkeypatch.setitem(sys.modules, "dlib", None)
    image = Image.new("RGB", (32, 32))
    with pytest.raises(MissingExtraError, match=r"\[ocr\]"):
        RapidOcrReader()(image)
    with pytest.raises(MissingExtraError, match=r"\[face\]"):
        DlibFaceEmbedder().faces(image)
