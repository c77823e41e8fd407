"""How close a recognised string is to the expected one: normalisation and two edit distances.

``text_accuracy(expected, found)`` is the text term of the OCR reward:

    acc = 1 - min(D(expected, found), |expected|) / max(|expected|, 1)

where ``D`` is the edit distance (insertions, deletions, substitutions, each 1) between ``expected`` and the
best-matching *substring* of ``found`` (``substring_distance``). Crediting a substring is the Flow-GRPO OCR
baseline's rule ("full credit when the target is a substring"); it is needed because OCR cuts lines differently in
two images, so the expected words often arrive with neighbouring words on the same detected line.

``substring_alignment`` runs the same recurrence with a backtrace: which character of ``expected`` sits on which
character of ``found``. The character-level layout term pairs glyph boxes by it, so the text term and the layout
term read the same alignment.

Both strings are normalised first (``normalise_text``): Unicode NFKC (full-width Latin and digits become ASCII,
ligatures split), whitespace removed (OCR inserts and drops spaces freely; Chinese has none) and, unless
``ignore_case=False``, case folded (the recogniser confuses o/O, s/S, c/C in most fonts).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["normalise_text", "levenshtein", "substring_distance", "substring_alignment", "Alignment", "text_accuracy"]


def normalise_text(text: str, *, ignore_case: bool = True, ignore_spaces: bool = True) -> str:
    """``text`` in the form the reward compares: NFKC, optionally without whitespace and case-folded."""
    out = unicodedata.normalize("NFKC", text)
    if ignore_spaces:
        out = "".join(out.split())
    else:
        out = " ".join(out.split())
    return out.casefold() if ignore_case else out


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b`` (unit-cost insert, delete, substitute)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def substring_distance(pattern: str, text: str) -> int:
    """Smallest edit distance between ``pattern`` and any substring of ``text`` (Sellers' approximate matching).

    Same recurrence as ``levenshtein`` with ``pattern`` along the rows, except that the match may start and end
    anywhere in ``text`` at no cost: the first row is all zeros and the answer is the minimum of the last row.
    """
    previous = [0] * (len(text) + 1)
    for i, cp in enumerate(pattern, start=1):
        current = [i]
        for j, ct in enumerate(text, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (cp != ct)))
        previous = current
    return min(previous)


@dataclass(frozen=True)
class Alignment:
    """How ``pattern`` sits on its best-matching substring ``text[start:end]``."""

    distance: int  # the edit distance, equal to ``substring_distance(pattern, text)``
    pairs: tuple[tuple[int, int], ...]  # (index in pattern, index in text) of identical characters, in order
    start: int
    end: int  # the matched substring is text[start:end]; its length is the prediction length of the reward


def substring_alignment(pattern: str, text: str) -> Alignment:
    """``substring_distance`` with its backtrace; ties prefer the longest substring, then the diagonal step."""
    rows = [[0] * (len(text) + 1)]
    for i, cp in enumerate(pattern, start=1):
        prev, row = rows[-1], [i]
        for j, ct in enumerate(text, start=1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (cp != ct)))
        rows.append(row)
    last = rows[-1]
    i, j = len(pattern), len(last) - 1 - last[::-1].index(min(last))
    end, pairs = j, []
    while i > 0:
        here = rows[i][j]
        if j > 0 and here == rows[i - 1][j - 1] + (pattern[i - 1] != text[j - 1]):
            if pattern[i - 1] == text[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif here == rows[i - 1][j] + 1:  # a pattern character missing from the text
            i -= 1
        else:  # an extra character in the text
            j -= 1
    return Alignment(distance=min(last), pairs=tuple(reversed(pairs)), start=j, end=end)


def text_accuracy(expected: str, found: str, *, ignore_case: bool = True, ignore_spaces: bool = True) -> float:
    """1 when ``expected`` occurs in ``found`` (after normalisation), falling to 0 with the edits it takes."""
    exp = normalise_text(expected, ignore_case=ignore_case, ignore_spaces=ignore_spaces)
    got = normalise_text(found, ignore_case=ignore_case, ignore_spaces=ignore_spaces)
    if not exp:
        return 1.0 if not got else 0.0
    return 1.0 - min(substring_distance(exp, got), len(exp)) / len(exp)
