"""Detected text lines and the geometry the layout reward compares them by.

A ``TextBox`` is one OCR detection: its text, the recogniser's confidence and the detector's quadrilateral
(4 corners, clockwise from top-left, in pixels). Glyph size is the quad's *height*: the mean length of its left
and right edges, i.e. the line height, which tracks the font size whatever the text's length or rotation.

Agreement of a candidate box ``c`` with the source box ``s`` (both in the candidate's pixel frame):

    dx = max(0, |cx_c - cx_s| - |w_c - w_s| / 2) / h_s     horizontal offset the length change does not explain
    dy = |cy_c - cy_s| / h_s                                vertical offset
    position = exp(-sqrt(dx^2 + dy^2) / tau_pos)
    size     = exp(-max(0, |ln(h_c / h_s)| - ln(1 + size_tol)) / tau_size)

Offsets are measured in source glyph heights, so the scores do not depend on the image resolution. A new text of
another length shifts the box centre by up to half the width change whether it was set left-, centre- or
right-aligned; that shift is forgiven (the ``|w_c - w_s| / 2`` term), a real move is not. ``size_tol`` absorbs
the jitter of detector boxes (ascenders, descenders, a different word); beyond it the size score decays
symmetrically in the log ratio, so both shrunken and inflated glyphs (the reward hack FireRed's layout term is
built against) lose credit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TextBox", "box_from_rect", "scale_box", "position_agreement", "size_agreement", "box_iou"]


@dataclass(frozen=True)
class TextBox:
    """One detected text line: ``quad`` is ((x, y) x 4) clockwise from the top-left corner, in pixels."""

    text: str
    score: float
    quad: tuple[tuple[float, float], ...]

    @property
    def center(self) -> tuple[float, float]:
        xs, ys = zip(*self.quad)
        return sum(xs) / 4.0, sum(ys) / 4.0

    @property
    def height(self) -> float:
        (p0, p1, p2, p3) = self.quad
        return (math.dist(p0, p3) + math.dist(p1, p2)) / 2.0

    @property
    def width(self) -> float:
        (p0, p1, p2, p3) = self.quad
        return (math.dist(p0, p1) + math.dist(p3, p2)) / 2.0

    @property
    def rect(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounds (x0, y0, x1, y1)."""
        xs, ys = zip(*self.quad)
        return min(xs), min(ys), max(xs), max(ys)


def box_from_rect(rect: tuple[float, float, float, float], text: str = "", score: float = 1.0) -> TextBox:
    """A ``TextBox`` for an axis-aligned rectangle (x0, y0, x1, y1), e.g. a source box the caller knows."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box {rect!r} is empty: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
    return TextBox(text=text, score=score, quad=((x0, y0), (x1, y0), (x1, y1), (x0, y1)))


def scale_box(box: TextBox, sx: float, sy: float) -> TextBox:
    """``box`` in an image resized by (sx, sy), e.g. the source box in the frame of a larger candidate."""
    return TextBox(text=box.text, score=box.score, quad=tuple((x * sx, y * sy) for x, y in box.quad))


def position_agreement(candidate: TextBox, source: TextBox, tau: float = 1.0) -> float:
    """1 when ``candidate`` sits where ``source`` was (up to a length change), decaying per glyph height moved."""
    (cx, cy), (sx, sy) = candidate.center, source.center
    h = max(source.height, 1e-6)
    dx = max(0.0, abs(cx - sx) - abs(candidate.width - source.width) / 2.0) / h
    dy = abs(cy - sy) / h
    return math.exp(-math.hypot(dx, dy) / tau)


def size_agreement(candidate: TextBox, source: TextBox, tolerance: float = 0.15, tau: float = 0.3) -> float:
    """1 when the glyph heights agree within ``tolerance`` (relative), decaying with the log ratio beyond it."""
    ratio = max(candidate.height, 1e-6) / max(source.height, 1e-6)
    excess = max(0.0, abs(math.log(ratio)) - math.log1p(tolerance))
    return math.exp(-excess / tau)


def box_iou(a: TextBox, b: TextBox) -> float:
    """Intersection over union of the axis-aligned bounds of two boxes (reported for information)."""
    ax0, ay0, ax1, ay1 = a.rect
    bx0, by0, bx1, by1 = b.rect
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def quad_from_array(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    """A (4, 2) array of corners -> the ``TextBox.quad`` tuple."""
    pts = np.asarray(points, dtype=np.float64).reshape(4, 2)
    return tuple((float(x), float(y)) for x, y in pts)
