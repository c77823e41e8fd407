"""A picture of what the OCR reward saw: detected lines, the source line and the line that earned the reward.

Colours: every candidate detection in orange, the source line (rescaled to the candidate) in blue, the matched line
in green with its character boxes (the OCR's, or the even split) in thin green; each box is labelled with its
recognised text, and the reward terms are written in the top-left corner.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .char_layout import char_boxes
from .ocr_layout import LayoutScore
from .text_boxes import TextBox

__all__ = ["draw_layout_overlay"]

DETECTION = (255, 140, 0)
SOURCE = (40, 110, 255)
MATCHED = (20, 200, 60)


def _outline(draw: ImageDraw.ImageDraw, box: TextBox, colour: tuple[int, int, int], width: int) -> None:
    points = [(round(x), round(y)) for x, y in box.quad]
    draw.line(points + points[:1], fill=colour, width=width)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
           font: ImageFont.ImageFont) -> None:
    x, y = max(0, round(xy[0])), max(0, round(xy[1]))
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour, font=font)


def draw_layout_overlay(image: Image.Image, score: LayoutScore) -> Image.Image:
    """A copy of ``image`` (the scored candidate) with the boxes and terms of ``score`` drawn on it."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 256))
    font = ImageFont.load_default(size=max(10, min(out.size) // 40))
    for box in score.detections:
        _outline(draw, box, DETECTION, width)
        x0, _, _, y1 = box.rect
        _label(draw, (x0, y1 + 1), box.text, DETECTION, font)
    if score.source_box is not None:
        _outline(draw, score.source_box, SOURCE, width)
    if score.matched is not None:
        for char in char_boxes(score.matched):
            _outline(draw, char, MATCHED, max(1, width // 2))
        _outline(draw, score.matched, MATCHED, width + 1)
    terms = [f"reward {score.reward:.3f}", f"text {score.text:.2f}"]
    if score.position is not None and score.size is not None:
        terms += [f"pos {score.position:.2f}", f"size {score.size:.2f}"]
    _label(draw, (2, 2), "  ".join(terms) + f"  want {score.expected!r}", MATCHED, font)
    return out
