"""Rewriting "Picture 5" / "图5" in an instruction after pictures were stitched into composites.

References are found by the project's one EN/CN parser (``firered_train.data.references``, which also serves
Stochastic Instruction Alignment in training). A picture alone in its composite keeps its reference form with the
new number (``Picture 4`` -> ``Picture 3``, ``the fourth image`` -> ``the third image``, ``图四`` -> ``图三``). A
picture that shares a composite is named by its position in it:

===============  ===========================================  ==================================
layout           English                                      Chinese
===============  ===========================================  ==================================
row of 2-3       ``the right part of Picture 3``              ``图3的右侧部分``
column of 2-3    ``the top part of Picture 2``                ``图2的上方部分``
more than 3      ``the 4th image from the left in Picture 2``  ``图2中从左数第4张``
===============  ===========================================  ==================================

An English reference written after "the" (``the second image``) drops its own article; one that starts a sentence
starts with a capital. References to numbers
beyond the pictures given are left alone, like all other text.
"""

from __future__ import annotations

import re
from typing import Mapping

from .composite import Placement

_EN_POSITIONS = {"row": {2: ("left", "right"), 3: ("left", "middle", "right")},
                 "column": {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}}
_CN_POSITIONS = {"row": {2: ("左侧", "右侧"), 3: ("左侧", "中间", "右侧")},
                 "column": {2: ("上方", "下方"), 3: ("上方", "中间", "下方")}}
_THE_BEFORE = re.compile(r"(?:^|\s)the\s+$", re.IGNORECASE)
_SENTENCE_START = re.compile(r"(?:^|[.!?\n])\s*$")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe(place: Placement, chinese: bool) -> str:
    """How to name a picture that shares a composite (see the table in the module docstring)."""
    c = place.composite
    if chinese:
        if place.count <= 3:
            return f"图{c}的{_CN_POSITIONS[place.direction][place.count][place.slot - 1]}部分"
        side = "左" if place.direction == "row" else "上"
        return f"图{c}中从{side}数第{place.slot}张"
    if place.count <= 3:
        return f"the {_EN_POSITIONS[place.direction][place.count][place.slot - 1]} part of Picture {c}"
    side = "left" if place.direction == "row" else "top"
    return f"the {_ordinal(place.slot)} image from the {side} in Picture {c}"


def rewrite_for_composites(text: str, placements: Mapping[int, Placement]) -> str:
    """``text`` with every reference to a placed picture pointing at its composite (see the module docstring)."""
    from firered_train.data.references import find_references, realign

    out, last = [], 0
    for ref in find_references(text):
        place = placements.get(ref.index)
        if place is None:
            continue
        span = text[ref.start: ref.end]
        if place.count == 1:
            # the parser's own formatting keeps the numeral style (digits, words, 2nd, Chinese numerals)
            replacement = realign(span, {ref.index: place.composite}, ref.index)
        else:
            replacement = describe(place, ref.chinese)
            if not ref.chinese and _THE_BEFORE.search(text[:ref.start]):
                replacement = replacement.removeprefix("the ")
            elif not ref.chinese and _SENTENCE_START.search(text[:ref.start]):
                replacement = replacement[0].upper() + replacement[1:]
        out.append(text[last: ref.start] + replacement)
        last = ref.end
    return "".join(out) + text[last:]
