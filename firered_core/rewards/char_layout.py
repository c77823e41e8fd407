"""The layout term of the OCR reward at character level: glyph boxes, the reference layout, their agreement.

**Character boxes** (``char_boxes``). A line's characters are its normalised text without spaces (OCR gives no
box to a space). When the OCR engine returned one box per character and they spell that text, they are used;
otherwise the line's quad is split evenly along its length among its characters. The split is an approximation
(a proportional font gives an "I" less room than a "W"; the error is at most half a glyph), but it lets the
line-level and the character-level score be one code path: the rest of the reward only sees character boxes.

**Reference** (``reference_chars``). The expected line ``s_tgt = prefix + new + suffix`` has no picture yet: the
source line reads ``prefix + old + suffix``, and the new characters are laid out where the old ones are, at the
old size. Their height is the mean height of the source line's characters, their pitch the source line's
(distance between its first and last character centres over n - 1; one character: its width), along the line's
direction. Whether the new text is set left-, centre- or right-aligned is unknown, so three references are built
(the new text starting at the old text's first character, centred on its middle, ending at its last) and the
best one counts; the unchanged prefix and suffix keep their own boxes, pushed aside by the length change as a
re-set line would push them. A source box with no text (a rectangle given by the caller) is split evenly among
the expected characters.

**Agreement** (``layout_agreement``). Characters of the prediction and the reference are paired by the
edit-distance alignment of the two strings (``text_match.substring_alignment``: only identical characters
pair, so a wrong letter earns no layout credit). For each pair i:

    d_i  = max(0, |c_pred - c_ref| / h_ref - pos_tolerance) / tau_pos          centre distance in glyph heights
    ds_i = max(0, ln(h_pred / h_ref) - ln(1 + size_tolerance)) / tau_size      growth only: shrinking is free
    L    = sum_i e^-d_i e^-ds_i / max(|s_tgt|, |s_pred|)                       layout_norm "sum" (default)
    L    = min(1, |s_pred| / |s_tgt|) * mean_i e^-d_i e^-ds_i                   layout_norm "mean"

``|s_pred|`` is the length of the substring of the prediction the expected text aligned to (text around it on
the same detected line is neither paired nor counted). Only growth is penalised by ``ds``: huge glyphs are the
reward hack the report builds the term against; shrunken text still loses through the centre distances, which
drift as its pitch shrinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from .layout_config import LayoutRewardConfig
from .text_boxes import TextBox, box_from_rect
from .text_match import Alignment, normalise_text

__all__ = ["CharLayout", "char_boxes", "reference_chars", "pair_penalties", "layout_agreement"]

Point = tuple[float, float]


@dataclass(frozen=True)
class CharLayout:
    """The layout term of one predicted line against one reference, and what it is made of."""

    layout: float  # L in [0, 1]
    position: float | None  # mean e^-d_i over the paired characters; None when nothing paired
    size: float | None  # mean e^-ds_i over the paired characters
    paired: int  # number of paired characters


def _lerp(a: Point, b: Point, t: float) -> Point:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def _split_evenly(line: TextBox, chars: str) -> tuple[TextBox, ...]:
    """``line``'s quad cut into ``len(chars)`` equal slices along its top and bottom edges."""
    p0, p1, p2, p3 = line.quad
    n = len(chars)
    out = []
    for k, ch in enumerate(chars):
        a, b = k / n, (k + 1) / n
        quad = (_lerp(p0, p1, a), _lerp(p0, p1, b), _lerp(p3, p2, b), _lerp(p3, p2, a))
        out.append(TextBox(text=ch, score=line.score, quad=quad))
    return tuple(out)


def char_boxes(line: TextBox, *, ignore_case: bool = True) -> tuple[TextBox, ...]:
    """One box per non-space character of ``line`` (normalised text): the OCR's boxes, else an even split."""
    chars = normalise_text(line.text, ignore_case=ignore_case)
    own = [normalise_text(c.text, ignore_case=ignore_case) for c in line.chars]
    if own and all(len(c) == 1 for c in own) and "".join(own) == chars:
        return tuple(replace(box, text=c, chars=()) for box, c in zip(line.chars, own))
    return _split_evenly(line, chars) if chars else ()


def _unit(a: Point, b: Point) -> Point:
    length = math.dist(a, b)
    return ((b[0] - a[0]) / length, (b[1] - a[1]) / length) if length > 0 else (1.0, 0.0)


def _along(point: Point, u: Point, by: float) -> Point:
    return point[0] + u[0] * by, point[1] + u[1] * by


def _shifted(box: TextBox, u: Point, by: float) -> TextBox:
    return TextBox(text=box.text, score=box.score, quad=tuple(_along(xy, u, by) for xy in box.quad))


def _placed(ch: str, centre: Point, pitch: float, height: float) -> TextBox:
    cx, cy = centre
    return box_from_rect((cx - pitch / 2, cy - height / 2, cx + pitch / 2, cy + height / 2), text=ch)


def reference_chars(source: TextBox, parts: tuple[str, str, str], *, ignore_case: bool = True
                    ) -> tuple[tuple[TextBox, ...], ...]:
    """Boxes for the expected line ``prefix + new + suffix`` where ``source`` (``prefix + old + suffix``) is:
    one layout per alignment of the new text (left, centre, right), see the module docstring."""
    prefix, new, suffix = (normalise_text(part, ignore_case=ignore_case) for part in parts)
    if not new:
        return ()
    have = char_boxes(source, ignore_case=ignore_case)
    if not have:  # a bare rectangle: the expected text fills it
        return (_split_evenly(source, prefix + new + suffix),)
    p, q, n = len(prefix), len(suffix), len(have)
    if p + q >= n or [c.text for c in have[:p]] != list(prefix) or [c.text for c in have[n - q:]] != list(suffix):
        # the unchanged parts are not where they should be: the whole line is the old text
        new, p, q = prefix + new + suffix, 0, 0
    first, last = have[0].center, have[-1].center
    pitch = math.dist(first, last) / (n - 1) if n > 1 else have[0].width
    u = _unit(*source.quad[:2])  # along the top edge: the line's direction
    height = sum(c.height for c in have) / n
    start, end, m = have[p].center, have[n - q - 1].center, len(new)
    grow = (m - (n - p - q)) * pitch  # how much longer the new text is than the old one
    run = pitch * (m - 1)  # first to last new character centre
    anchors = (  # (centre of the first new character, shift of the prefix, shift of the suffix)
        (start, 0.0, grow),
        (_along(_lerp(start, end, 0.5), u, -run / 2), -grow / 2, grow / 2),
        (_along(end, u, -run), -grow, 0.0),
    )
    layouts = []
    for first_new, before, after in anchors:
        middle = [_placed(ch, _along(first_new, u, pitch * k), pitch, height) for k, ch in enumerate(new)]
        layouts.append(tuple([_shifted(c, u, before) for c in have[:p]] + middle
                             + [_shifted(c, u, after) for c in have[n - q:]]))
    return tuple(layouts)


def pair_penalties(pred: TextBox, ref: TextBox, config: LayoutRewardConfig) -> tuple[float, float]:
    """(d_i, ds_i) of one paired character: centre distance and over-scaling, as in the module docstring."""
    h_ref = max(ref.height, 1e-6)
    d = max(0.0, math.dist(pred.center, ref.center) / h_ref - config.pos_tolerance) / config.tau_pos
    growth = math.log(max(pred.height, 1e-6) / h_ref) - math.log1p(config.size_tolerance)
    return d, max(0.0, growth) / config.tau_size


def layout_agreement(pred: Sequence[TextBox], ref: Sequence[TextBox], alignment: Alignment,
                     config: LayoutRewardConfig) -> CharLayout:
    """L of predicted character boxes ``pred`` against reference boxes ``ref``, paired by ``alignment``
    (pattern = the reference's string, text = the prediction's)."""
    penalties = [pair_penalties(pred[j], ref[i], config) for i, j in alignment.pairs]
    if not penalties:
        return CharLayout(layout=0.0, position=None, size=None, paired=0)
    terms = [math.exp(-d - ds) for d, ds in penalties]
    n_tgt, n_pred = len(ref), alignment.end - alignment.start
    if config.layout_norm == "sum":
        layout = sum(terms) / max(n_tgt, n_pred, 1)
    else:
        layout = min(1.0, n_pred / max(n_tgt, 1)) * sum(terms) / len(terms)
    position = sum(math.exp(-d) for d, _ in penalties) / len(penalties)
    size = sum(math.exp(-ds) for _, ds in penalties) / len(penalties)
    return CharLayout(layout=layout, position=position, size=size, paired=len(penalties))
