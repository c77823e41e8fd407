"""Detected text lines and their boxes.

A ``TextBox`` is one OCR detection: its text, the recogniser's confidence and the detector's quadrilateral
(4 corners, clockwise from top-left, in pixels). Glyph size is the quad's *height*: the mean length of its left
and right edges, i.e. the line height, which tracks the font size whatever the text's length or rotation.

``chars`` holds the line's character boxes when the OCR engine gives them (RapidOCR does, from the recogniser's
column positions: real x extents, the line's own y extent), one ``TextBox`` per non-space character; it is empty
otherwise. ``char_layout.char_boxes`` turns either case into character boxes for the layout term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TextBox", "box_from_rect", "scale_box", "box_iou"]


@dataclass(frozen=True)
class TextBox:
    """One detected text line: ``quad`` is ((x, y) x 4) clockwise from the top-left corner, in pixels."""

    text: str
    score: float
    quad: tuple[tuple[float, float], ...]
    chars: tuple["TextBox", ...] = ()  # the OCR engine's character boxes, in reading order; () = not given

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
    return TextBox(text=box.text, score=box.score, quad=tuple((x * sx, y * sy) for x, y in box.quad),
                   chars=tuple(scale_box(c, sx, sy) for c in box.chars))


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
