"""Pixel criteria the success checks are built from: each returns a fraction or a score, never a verdict.

- ``color_fraction``: share of a mask's pixels that show a colour (per-channel tolerance);
- ``match_fraction``: share of a mask's pixels where two images agree (per-channel tolerance);
- ``ink_iou``: overlap between the pixels of a colour inside a box and the expected ink of a word;
- ``outside``: the mask of everything outside some boxes (the "nothing else changed" area);
- ``dilate``: grow a mask (``kornia.morphology.dilation``), so object edges are not held to pixel exactness.

Colours are compared with the largest per-channel difference: simple, and since object colours are saturated
and backgrounds muted (see ``palette``), a tolerance of a few dozen levels separates them cleanly.

Public API: the functions above and ``spec_shape_mask``, ``spec_text_mask``, ``background_of``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from kornia.morphology import dilation

from ..scenes.render import render_background, shape_mask, text_mask
from ..scenes.scene import background_from_dict, shape_from_dict, text_from_dict


def _close(a: np.ndarray, b: np.ndarray, tol: int) -> np.ndarray:
    """(H, W) bool: per-channel difference at most ``tol`` everywhere."""
    return np.abs(a.astype(np.int16) - np.asarray(b, dtype=np.int16)).max(axis=-1) <= tol


def color_fraction(img: np.ndarray, mask: np.ndarray, rgb: Sequence[int], tol: int) -> float:
    """Share of the ``mask`` pixels of ``img`` within ``tol`` of ``rgb``; 1.0 for an empty mask."""
    if not mask.any():
        return 1.0
    return float(_close(img[mask], np.array(rgb), tol).mean())


def match_fraction(a: np.ndarray, b: np.ndarray, mask: np.ndarray, tol: int) -> float:
    """Share of the ``mask`` pixels where ``a`` and ``b`` agree within ``tol``; 1.0 for an empty mask."""
    if not mask.any():
        return 1.0
    return float(_close(a[mask], b[mask], tol).mean())


def outside(boxes: Sequence[Sequence[int]] | None, size: int) -> np.ndarray:
    """Mask of the pixels outside every box (x0, y0, x1, y1, exclusive ends); everything when ``boxes`` is None."""
    mask = np.ones((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes or ():
        mask[y0:y1, x0:x1] = False
    return mask


def inside(boxes: Sequence[Sequence[int]], size: int) -> np.ndarray:
    return ~outside(boxes, size)


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Grow a bool mask by ``radius`` steps to the 4 neighbours: a diamond, |dy| + |dx| <= radius."""
    offsets = torch.arange(-radius, radius + 1).abs()
    diamond = (offsets[:, None] + offsets[None, :] <= radius).float()
    grown = dilation(torch.from_numpy(mask.astype(np.float32))[None, None], diamond)  # [1, 1, H, W]
    return grown[0, 0].bool().numpy()


def ink_iou(img: np.ndarray, expected: np.ndarray, rgb: Sequence[int], boxes: Sequence[Sequence[int]],
            tol: int) -> float:
    """IoU, inside ``boxes``, of the pixels showing ``rgb`` and the ``expected`` ink mask."""
    region = inside(boxes, img.shape[0])
    seen = _close(img, np.array(rgb), tol) & region
    want = expected & region
    union = (seen | want).sum()
    return float((seen & want).sum() / union) if union else 1.0


def spec_shape_mask(d: dict[str, Any], size: int) -> np.ndarray:
    return shape_mask(shape_from_dict(d), size)


def spec_text_mask(d: dict[str, Any], size: int) -> np.ndarray:
    return text_mask(text_from_dict(d), size)


def background_of(spec: dict[str, Any]) -> np.ndarray:
    """The rendered background a spec names: what vacated pixels should show."""
    return render_background(background_from_dict(spec["background"]), int(spec["size"]))
