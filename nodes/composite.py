"""More pictures than the model takes: crop each to its region of interest and stitch them into <= 3 composites.

The model was trained with 1-3 reference images. For more, this module makes at most ``max_composites`` images,
deterministically (same pictures in, same composites out), with no model and no network:

1. **Grouping.** Picture 1 - by convention the scene being edited - stays alone and uncropped as composite 1.
   Pictures 2..N are split, in order, into ``max_composites - 1`` contiguous groups of nearly equal size (the
   earlier groups take the remainder). With ``max_composites`` = 1 every picture goes into one composite.
2. **Region of interest.** The background colour is the per-channel median of a thin border ring; pixels that
   differ from it by more than ``threshold`` in some channel are foreground; rows and columns with enough
   foreground give the bounding box, padded by a margin. A picture with no clear foreground, or whose
   foreground fills nearly all of it (a photo), is kept whole. A caller may pass its own boxes (the VLM hook).
3. **Stitching.** A group's crops are scaled to a common height and placed left to right, or to a common width
   and placed top to bottom - whichever composite is closer to square - on white with a small gap.

``Placement`` records where each picture went, for rewriting the instruction (``reference_rewrite``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in pixels

BORDER = 0.02  # width of the border ring that defines the background, as a fraction of the shorter side
THRESHOLD = 24  # 8-bit difference from the background colour that counts as foreground
MIN_LINE_FRACTION = 0.005  # a row/column is foreground when this share of its pixels are
MARGIN = 0.04  # padding around the found box, as a fraction of its longer side
KEEP_WHOLE_AREA = 0.9  # a box covering this share of the picture means "the whole picture matters"
MIN_SIDE = 16  # the core refuses smaller images
MAX_STRIP_SIDE = 1024  # common height (row) or width (column) is capped; the pipeline resizes to ~1 MP anyway
GAP = 8  # px of white between stitched crops
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Placement:
    """Where picture ``picture`` (1-based) went: composite ``composite`` (1-based), slot ``slot`` (1-based) of
    ``count`` crops laid out as a ``"row"`` (left to right) or ``"column"`` (top to bottom)."""

    picture: int
    composite: int
    slot: int
    count: int
    direction: str


@dataclass(frozen=True)
class CompositePlan:
    images: list[Image.Image]
    placements: dict[int, Placement]
    boxes: dict[int, Box]  # the crop used for each picture that was cropped


def roi_box(image: Image.Image) -> Box:
    """The region of interest of ``image`` (see the module docstring); the whole picture when nothing stands out."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)  # [H, W, 3]
    height, width = pixels.shape[:2]
    ring = max(1, round(BORDER * min(height, width)))
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    background = np.median(border, axis=0)  # [3]
    foreground = (np.abs(pixels - background).max(axis=2) > THRESHOLD)  # [H, W]
    rows = np.flatnonzero(foreground.sum(axis=1) >= max(1, MIN_LINE_FRACTION * width))
    cols = np.flatnonzero(foreground.sum(axis=0) >= max(1, MIN_LINE_FRACTION * height))
    whole = (0, 0, width, height)
    if rows.size == 0 or cols.size == 0:
        return whole
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad = max(2, round(MARGIN * max(bottom - top, right - left)))
    box = _grow((left - pad, top - pad, right + pad, bottom + pad), width, height)
    if (box[2] - box[0]) * (box[3] - box[1]) >= KEEP_WHOLE_AREA * width * height:
        return whole
    return box


def _grow(box: Box, width: int, height: int) -> Box:
    """``box`` clamped to the picture and widened to at least ``MIN_SIDE`` on each side."""
    left, top, right, bottom = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    for lo, hi, limit, axis in ((left, right, width, 0), (top, bottom, height, 1)):
        short = MIN_SIDE - (hi - lo)
        if short > 0:
            lo = max(0, min(lo - short // 2, limit - MIN_SIDE))
            hi = min(limit, lo + MIN_SIDE)
        if axis == 0:
            left, right = lo, hi
        else:
            top, bottom = lo, hi
    return left, top, right, bottom


def group_pictures(n: int, max_composites: int) -> list[list[int]]:
    """1-based picture numbers per composite (see the grouping rule in the module docstring)."""
    if not 1 <= max_composites:
        raise ValueError(f"max_composites must be >= 1, got {max_composites}")
    if n <= max_composites:
        return [[i] for i in range(1, n + 1)]
    if max_composites == 1:
        return [list(range(1, n + 1))]
    rest, slots = list(range(2, n + 1)), max_composites - 1
    size, extra = divmod(len(rest), slots)
    groups, start = [[1]], 0
    for g in range(slots):
        end = start + size + (1 if g < extra else 0)
        groups.append(rest[start:end])
        start = end
    return groups


def stitch(crops: Sequence[Image.Image]) -> tuple[Image.Image, str]:
    """The crops side by side (``"row"``) or stacked (``"column"``), whichever is closer to square."""
    if len(crops) == 1:
        return crops[0], "row"
    row = _lay_out(crops, "row")
    column = _lay_out(crops, "column")
    squareness = [abs(math.log(img.width / img.height)) for img in (row, column)]
    return (row, "row") if squareness[0] <= squareness[1] else (column, "column")


def _lay_out(crops: Sequence[Image.Image], direction: str) -> Image.Image:
    across = "height" if direction == "row" else "width"
    common = min(MAX_STRIP_SIDE, max(getattr(c, across) for c in crops))
    scaled = []
    for crop in crops:
        factor = common / getattr(crop, across)
        size = (round(crop.width * factor), common) if direction == "row" else (common, round(crop.height * factor))
        size = (max(1, size[0]), max(1, size[1]))
        scaled.append(crop if crop.size == size else crop.resize(size, Image.Resampling.LANCZOS))
    if direction == "row":
        canvas = Image.new("RGB", (sum(c.width for c in scaled) + GAP * (len(scaled) - 1), common), BACKGROUND)
    else:
        canvas = Image.new("RGB", (common, sum(c.height for c in scaled) + GAP * (len(scaled) - 1)), BACKGROUND)
    offset = 0
    for crop in scaled:
        canvas.paste(crop, (offset, 0) if direction == "row" else (0, offset))
        offset += (crop.width if direction == "row" else crop.height) + GAP
    return canvas


def make_composites(pictures: Sequence[Image.Image], max_composites: int = 3,
                    boxes: dict[int, Box] | None = None) -> CompositePlan:
    """At most ``max_composites`` images from ``pictures``; ``boxes`` (1-based picture -> box) replaces the
    heuristic crop of those pictures. With few enough pictures they are returned unchanged."""
    groups = group_pictures(len(pictures), max_composites)
    images: list[Image.Image] = []
    placements: dict[int, Placement] = {}
    used: dict[int, Box] = {}
    for c, group in enumerate(groups, start=1):
        if len(group) == 1:
            images.append(pictures[group[0] - 1])
            placements[group[0]] = Placement(group[0], c, 1, 1, "row")
            continue
        crops = []
        for p in group:
            picture = pictures[p - 1]
            box = (boxes or {}).get(p) or roi_box(picture)
            used[p] = _grow(box, picture.width, picture.height)
            crops.append(picture.crop(used[p]))
        composite, direction = stitch(crops)
        images.append(composite)
        placements.update({p: Placement(p, c, slot, len(group), direction) for slot, p in enumerate(group, 1)})
    return CompositePlan(images, placements, used)
