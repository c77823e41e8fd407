"""Rendering scene descriptions to pixels, and the masks the success checks compare against.

Everything is drawn without anti-aliasing (shapes as hard-edged polygons, text with Pillow's bundled scalable
font in 1-bit mode), so an object's mask is exact: a pixel either is the object's colour or is what lies
behind it. That keeps targets exact and lets a check count pixels instead of guessing at blended edges.

Text always uses ``ImageFont.load_default(size=N)`` - the font that ships inside Pillow - never a system font,
so the same scene renders to the same pixels on every machine with the same Pillow.

Public API: ``render_scene``, ``render_background``, ``shape_mask``, ``text_mask``, ``mask_box``, ``font_for``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .palette import color_rgb
from .scene import Background, Box, Scene, Shape, TextItem, cell_box, shape_geometry

# Font height as a fraction of the canvas: the longest word (4 letters) still fits a row with a margin.
_FONT_FRACTION = 0.2


@lru_cache(maxsize=16)
def font_for(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at the text height used on a ``size`` canvas."""
    return ImageFont.load_default(size=max(8, round(size * _FONT_FRACTION)))


# ----------------------------------------------------------------------------------------------- background

def render_background(bg: Background, size: int) -> np.ndarray:
    """(size, size, 3) uint8 fill of a background."""
    c0 = np.array(color_rgb(bg.colors[0]), dtype=np.float64)
    c1 = np.array(color_rgb(bg.colors[1]), dtype=np.float64)
    if bg.kind in ("solid", "canvas"):
        return np.broadcast_to(c0.astype(np.uint8), (size, size, 3)).copy()
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    if bg.kind == "gradient":
        ramp = {"horizontal": xs, "vertical": ys, "diagonal": (xs + ys) / 2}[bg.direction] / (size - 1)
        mixed = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
        return np.rint(mixed).astype(np.uint8)
    coord = (xs if bg.direction == "vertical" else ys).astype(np.int64)  # vertical stripes vary along x
    band = (coord // bg.period) % 2 == 1
    return np.where(band[..., None], c1, c0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- masks

def _regular(cx: float, cy: float, r: float, n: int, phase: float = -90.0) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(math.radians(phase + 360 * i / n)), cy + r * math.sin(math.radians(phase + 360 * i / n)))
            for i in range(n)]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    outer, inner = _regular(cx, cy, r, 5), _regular(cx, cy, r * 0.45, 5, phase=-54.0)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + x * r / 17, cy - y * r / 17 - r * 0.05))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float) -> None:
    """Draw one shape in fill 255 (and 0 for cut-outs) on an L-mode mask."""
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "square":
        h = r * 0.8
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif kind == "triangle":
        draw.polygon(_regular(cx, cy + r * 0.15, r, 3), fill=255)
    elif kind == "star":
        draw.polygon(_star(cx, cy, r), fill=255)
    elif kind == "diamond":
        draw.polygon(_regular(cx, cy, r, 4), fill=255)
    elif kind == "hexagon":
        draw.polygon(_regular(cx, cy, r, 6, phase=0.0), fill=255)
    elif kind == "cross":
        w = r * 0.33
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif kind == "heart":
        draw.polygon(_heart(cx, cy, r), fill=255)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = r * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif kind == "arrow":  # points right: a shaft and a head
        draw.rectangle((cx - r, cy - r * 0.25, cx + r * 0.1, cy + r * 0.25), fill=255)
        draw.polygon([(cx, cy - r * 0.7), (cx + r, cy), (cx, cy + r * 0.7)], fill=255)
    elif kind == "house":
        draw.rectangle((cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r * 0.85), fill=255)
        draw.polygon([(cx - r * 0.95, cy - r * 0.05), (cx, cy - r * 0.9), (cx + r * 0.95, cy - r * 0.05)], fill=255)
    elif kind == "moon":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        off = r * 0.5
        draw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=0)
    else:
        raise ValueError(f"no drawing for shape kind {kind!r}")


def shape_mask(shape: Shape, size: int) -> np.ndarray:
    """(size, size) bool mask of the pixels a shape covers."""
    img = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(img), shape.kind, *shape_geometry(shape, size))
    return np.asarray(img) > 0


def text_mask(text: TextItem, size: int) -> np.ndarray:
    """(size, size) bool mask of the ink of a word, centred in its grid row."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"  # no anti-aliasing: ink pixels are exact
    x0, y0, x1, y1 = cell_box(3 * text.row, size)
    draw.text((size / 2, (y0 + y1) / 2), text.word, fill=255, font=font_for(size), anchor="mm")
    return np.asarray(img) > 0


def text_fits(word: str, size: int) -> bool:
    """Whether a word fits inside the canvas width with a small margin."""
    left, _, right, _ = font_for(size).getbbox(word)
    return right - left <= size - 4


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight (x0, y0, x1, y1) of a mask's true pixels, exclusive ends; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


# ---------------------------------------------------------------------------------------------------- scene

def paint(canvas: np.ndarray, mask: np.ndarray, color: str) -> None:
    """Fill ``mask`` of an (H, W, 3) uint8 array with a named colour, in place."""
    canvas[mask] = np.array(color_rgb(color), dtype=np.uint8)


def render_array(scene: Scene) -> np.ndarray:
    """(size, size, 3) uint8 pixels of a scene: background, then shapes, then text on top."""
    canvas = render_background(scene.background, scene.size)
    for shape in scene.shapes:
        paint(canvas, shape_mask(shape, scene.size), shape.color)
    if scene.text is not None:
        paint(canvas, text_mask(scene.text, scene.size), scene.text.color)
    return canvas


def render_scene(scene: Scene) -> Image.Image:
    """A scene as an RGB image."""
    return Image.fromarray(render_array(scene), "RGB")
