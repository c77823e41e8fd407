"""Whole-image pixel operations, named and parameterised by plain JSON values.

Some edits are not scene changes but image transforms: brighten, raise contrast, mirror, rotate, posterize, draw
as outlines - and the low-level degradations (noise, blur, underexposure) whose inverse is the edit. Each op is
``(name, params)`` with JSON-able params, so an edit spec can record exactly what was applied and a success check
can apply it again to the source to know what the result should look like.

Ops are deterministic: noise draws from a ``numpy`` generator seeded by ``params["seed"]``, the rest are plain
arithmetic or Pillow transforms with no randomness.

Public API: ``apply_op``, ``OPS``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Params = dict[str, Any]

# Neighbouring pixels further apart than this (max over channels) are an edge for the outline style; flat fills
# and smooth gradients stay well below it, object boundaries are far above.
_EDGE_THRESHOLD = 24


def _brightness(img: Image.Image, p: Params) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(float(p["factor"]))


def _contrast(img: Image.Image, p: Params) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(float(p["factor"]))


def _posterize(img: Image.Image, p: Params) -> Image.Image:
    return ImageOps.posterize(img, int(p["bits"]))


def _outline(img: Image.Image, p: Params) -> Image.Image:
    """Black lines where colour changes abruptly, on white paper: a line-drawing style."""
    a = np.asarray(img, dtype=np.int16)
    edge = np.zeros(a.shape[:2], dtype=bool)
    dx = np.abs(a[:, 1:] - a[:, :-1]).max(axis=2) > _EDGE_THRESHOLD
    dy = np.abs(a[1:] - a[:-1]).max(axis=2) > _EDGE_THRESHOLD
    edge[:, 1:] |= dx
    edge[1:] |= dy
    out = np.where(edge[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(out, 3, axis=2), "RGB")


def _mirror(img: Image.Image, p: Params) -> Image.Image:
    return ImageOps.mirror(img) if p["axis"] == "horizontal" else ImageOps.flip(img)


_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _rotate(img: Image.Image, p: Params) -> Image.Image:
    # Counter-clockwise degrees, as Pillow counts; square canvases keep their size.
    return img.transpose(_ROTATIONS[int(p["degrees"])])


def _noise(img: Image.Image, p: Params) -> Image.Image:
    rng = np.random.default_rng(int(p["seed"]))
    a = np.asarray(img, dtype=np.float64) + rng.normal(0.0, float(p["sigma"]), size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _blur(img: Image.Image, p: Params) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(float(p["radius"])))


def _darken(img: Image.Image, p: Params) -> Image.Image:
    a = np.asarray(img, dtype=np.float64) * float(p["factor"])
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


OPS: dict[str, Callable[[Image.Image, Params], Image.Image]] = {
    "brightness": _brightness, "contrast": _contrast, "posterize": _posterize, "outline": _outline,
    "mirror": _mirror, "rotate": _rotate, "noise": _noise, "blur": _blur, "darken": _darken,
}


def apply_op(name: str, img: Image.Image, params: Params) -> Image.Image:
    """Apply the named op; raises ``KeyError`` for an unknown name."""
    return OPS[name](img.convert("RGB"), params)
