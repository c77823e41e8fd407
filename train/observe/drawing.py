"""Text on PIL images for the training pictures (sample grids, loss curve): fonts, measuring, fitting.

Pillow's bundled default font is used, so nothing depends on fonts installed on the machine. With FreeType it is
a scalable font at any size; without it Pillow falls back to a fixed bitmap font that can only encode Latin-1, so
other characters (a Chinese instruction) are replaced by "?" instead of raising.
"""

from __future__ import annotations

import functools

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Font", "fit_text", "font", "text_size"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def font(size: int = 14) -> Font:
    """Pillow's default font at ``size`` px (a fixed-size bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # built without FreeType
        return ImageFont.load_default()


def _drawable(text: str, fnt: Font) -> str:
    if isinstance(fnt, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", errors="replace").decode("latin-1")


_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def text_size(text: str, fnt: Font) -> tuple[int, int]:
    """Width and height in pixels of ``text`` drawn with ``fnt``."""
    left, top, right, bottom = _MEASURE.textbbox((0, 0), _drawable(text, fnt), font=fnt)
    return right - left, bottom - top


def fit_text(text: str, fnt: Font, max_width: int) -> str:
    """``text`` on one line, cut and ended with "..." where it would be wider than ``max_width``."""
    text = _drawable(" ".join(text.split()), fnt)
    if text_size(text, fnt)[0] <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if text_size(text[:mid] + "...", fnt)[0] <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "..." if lo else ""
