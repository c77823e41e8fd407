"""Image references inside an instruction ("Picture 2", "图2"): finding them and rewriting them.

When Stochastic Instruction Alignment reorders or drops source images, the numbers in the instruction must
follow. ``realign(text, mapping, n_images)`` rewrites every reference to image ``i`` (1-based) as a reference to
``mapping[i]``, or removes it when ``mapping[i]`` is None. Numbers outside 1..n_images are not references to
this sample's images and are left alone, as is all other text.

Recognised forms (case-insensitive; the spelling, spacing and numeral style of the original are kept):

- English: ``Picture 2``, ``picture2``, ``Image 2``, ``img 2``, ``Photo 2``, ``Figure 2``, ``Fig 2``, ``Fig. 2``,
  ``image #2``; ordinals ``the second image``, ``2nd picture`` (first .. tenth, 1st .. 10th).
- Chinese: ``图2``, ``图 2``, ``图片2``, ``图像 2``, ``图二`` (Chinese numerals one to ten), ``第2张``, ``第二张图``,
  ``第 2 幅图片``. ``图`` inside common words (地图, 意图, 构图, 试图, 视图, 插图) is not a reference.
- Not understood: plural lists (``images 1 and 2`` is left as it is; in ``图1和2`` only ``图1`` is seen, the bare
  ``2`` is not) and references by description ("the left photo"). Data with such phrasing should be rewritten
  before training or trained with ``shuffle_prob = image_drop_prob = 0``.

Removing a reference to a dropped image, the first rule that applies:

1. English possessive: ``Picture 2's hat`` -> ``the hat``.
2. Preposition phrase: ``the cat from Picture 2`` -> ``the cat`` (from, in, of, on, at, into, onto, to, with,
   using, like, based on; an article after the preposition goes too). Chinese: ``图2中的猫`` / ``图2的猫`` ->
   ``猫``; ``从图2中`` / ``在图2里`` -> removed.
3. List of references: ``Picture 1 and Picture 2`` -> ``Picture 1``; ``图1和图2`` -> ``图1`` (joins: comma, and,
   or, &, 和, 与, 及, 跟, 、), taking the join before the reference if there is one, else the one after.
4. Otherwise the reference becomes a neutral noun: ``the image`` (``image`` after "the"), Chinese ``图片``.

Then spaces are tidied (doubles, space before punctuation, a leading comma) and the first letter is capitalised
again if the original began with a capital.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_EN_NOUN = r"(?:picture|image|img|photo|figure|fig\.?)"
_CN_DIGITS = "一二三四五六七八九十"
_CN_NUM = rf"(?:\d+|[{_CN_DIGITS}])"
_ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("en", re.compile(rf"(?<![a-z]){_EN_NOUN}\s*(?:#\s*)?(?P<num>\d+)(?!\d)", re.IGNORECASE)),
    ("en_ordinal", re.compile(rf"(?<![a-z])(?P<num>{'|'.join(_ORDINAL_WORDS)}|\d+(?:st|nd|rd|th))\s+{_EN_NOUN}"
                              r"(?![a-z])", re.IGNORECASE)),
    ("cn", re.compile(rf"(?<![地意构试视插])(?:图片|图像|图)\s*(?P<num>{_CN_NUM})(?!\d)")),
    ("cn_ordinal", re.compile(rf"第\s*(?P<num>{_CN_NUM})\s*(?:张|幅)(?:图片|图像|照片|图)?")),
)

_EN_POSSESSIVE = re.compile(r"^['’]s(?![a-z])", re.IGNORECASE)
_EN_PREPOSITION = re.compile(r"(?:^|\s+)(?:from|in|of|on|at|into|onto|to|with|using|like|based on)\s+(?:the\s+)?$",
                             re.IGNORECASE)
_EN_JOIN_BEFORE = re.compile(r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+|\s*&\s*)$", re.IGNORECASE)
_EN_JOIN_AFTER = re.compile(r"^(?:\s*,\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+|\s*&\s*)", re.IGNORECASE)
_EN_THE_BEFORE = re.compile(r"(?:^|\s)the\s+$", re.IGNORECASE)
_CN_OF_AFTER = re.compile(r"^\s*(?:中|里|上)?\s*的")
_CN_IN_BEFORE = re.compile(r"(?:从|在)\s*$")
_CN_IN_AFTER = re.compile(r"^(?:\s*(?:中|里|上))?")
_CN_JOIN_BEFORE = re.compile(r"\s*(?:和|与|及|跟|、)\s*$")
_CN_JOIN_AFTER = re.compile(r"^\s*(?:和|与|及|跟|、)\s*")


@dataclass(frozen=True)
class Reference:
    """One reference in a text: its span, the number's span, the image it names (1-based) and its form."""

    start: int
    end: int
    num_start: int
    num_end: int
    index: int
    form: str  # "en", "en_ordinal", "cn" or "cn_ordinal"

    @property
    def chinese(self) -> bool:
        return self.form.startswith("cn")


def _number(token: str) -> int:
    token = token.lower()
    if token.isdigit():
        return int(token)
    if token in _ORDINAL_WORDS:
        return _ORDINAL_WORDS.index(token) + 1
    if token in _CN_DIGITS:
        return _CN_DIGITS.index(token) + 1
    return int(token[:-2])  # "2nd"


def _format_number(new: int, original: str) -> str:
    """``new`` written the way ``original`` was: digits, a Chinese numeral, an ordinal word or "2nd"."""
    if original.isdigit():
        return str(new)
    if original in _CN_DIGITS and new <= len(_CN_DIGITS):
        return _CN_DIGITS[new - 1]
    if original.lower() in _ORDINAL_WORDS and new <= len(_ORDINAL_WORDS):
        word = _ORDINAL_WORDS[new - 1]
        return word.capitalize() if original[0].isupper() else word
    if original in _CN_DIGITS or original.lower() in _ORDINAL_WORDS:
        return str(new)  # past ten: digits are still understood
    suffix = "th" if 10 <= new % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(new % 10, "th")
    return f"{new}{suffix}"


def find_references(text: str) -> list[Reference]:
    """All image references in ``text``, in order, without overlaps."""
    found = []
    for form, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            found.append(Reference(m.start(), m.end(), m.start("num"), m.end("num"), _number(m["num"]), form))
    found.sort(key=lambda r: (r.start, -(r.end - r.start)))
    kept: list[Reference] = []
    for ref in found:
        if not kept or ref.start >= kept[-1].end:
            kept.append(ref)
    return kept


def _removal(text: str, ref: Reference, refs: list[Reference], taken: int) -> tuple[int, int, str]:
    """(start, end, replacement) removing the dropped reference ``ref``; ``taken`` = end of the last edit."""
    starts, ends = {r.start for r in refs}, {r.end for r in refs}
    before, after = text[taken: ref.start], text[ref.end:]
    if not ref.chinese:
        if m := _EN_POSSESSIVE.match(after):
            return ref.start, ref.end + m.end(), "the"
        if m := _EN_PREPOSITION.search(before):
            return taken + m.start(), ref.end, ""
        join_before, join_after = _EN_JOIN_BEFORE.search(before), _EN_JOIN_AFTER.match(after)
    else:
        if m := _CN_OF_AFTER.match(after):
            left = _CN_IN_BEFORE.search(before)
            return (taken + left.start() if left else ref.start), ref.end + m.end(), ""
        if left := _CN_IN_BEFORE.search(before):
            return taken + left.start(), ref.end + _CN_IN_AFTER.match(after).end(), ""
        join_before, join_after = _CN_JOIN_BEFORE.search(before), _CN_JOIN_AFTER.match(after)
    if join_before and taken + join_before.start() in ends:
        return taken + join_before.start(), ref.end, ""
    if join_after and ref.end + join_after.end() in starts:
        return ref.start, ref.end + join_after.end(), ""
    if ref.chinese:
        return ref.start, ref.end, "图片"
    return ref.start, ref.end, ("image" if _EN_THE_BEFORE.search(text[: ref.start]) else "the image")


def _tidy(text: str, original: str) -> str:
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r",(\s*,)+", ",", text)
    text = re.sub(r"^[\s,;:，、；：]+", "", text).strip()
    if text and original[:1].isupper() and text[0].islower():
        text = text[0].upper() + text[1:]
    return text


def realign(text: str, mapping: Mapping[int, int | None], n_images: int) -> str:
    """Rewrite the references of ``text`` for a new image order; see the module docstring.

    ``mapping[i]`` is the new 1-based number of old image ``i`` (1..n_images), or None if it was dropped.
    """
    refs = [r for r in find_references(text) if 1 <= r.index <= n_images]
    edits: list[tuple[int, int, str]] = []
    taken = 0
    for ref in refs:
        new = mapping.get(ref.index)
        if new is None:
            start, end, replacement = _removal(text, ref, refs, taken)
        else:
            start, end = ref.num_start, ref.num_end
            replacement = _format_number(new, text[ref.num_start: ref.num_end])
        edits.append((start, end, replacement))
        taken = end
    out = text
    for start, end, replacement in reversed(edits):
        out = out[:start] + replacement + out[end:]
    dropped = any(mapping.get(r.index) is None for r in refs)
    return _tidy(out, text) if dropped else out
