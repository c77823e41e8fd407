"""The output-size rules, free of torch so the command line can check sizes before loading anything.

A model makes images whose sides are multiples of its token size (VAE compression x transformer patch: 16 for the
released model, 8 for the embedded one), between one token and ``MAX_SIDE``:

- no side given: about the model's area at the reference aspect (``calculate_dimensions``, the reference's rule),
  each side then floored to the token size;
- one side given: the other follows the reference aspect, rounded to the token size;
- both given: used as they are;
- size mode ``"match"`` (``match_canvas``): Picture 1's own size, each side padded up to the next multiple of the
  token size (by less than one token); the pipeline encodes Picture 1 at exactly that canvas and crops the
  padding off the result, so the output has Picture 1's pixel size and grid.

A given side the model cannot make is refused with the nearest sizes it can, never rounded silently; an automatic
side that falls outside the limits is refused with the reason. ``folder_token_size`` reads a model folder's token
size from its config files, so a size can be refused before any weights are read. ``check_area`` validates the
areas references are encoded at (``vae_ref_area``, ``cond_ref_area``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SIZE_MULTIPLE = 32  # the reference rounds both sides of every computed size to this
MAX_SIDE = 8192  # px; also the nodes' widget limit and the largest side images.MAX_PIXELS admits in a square
SIZE_MODES = ("area", "match")  # the model's area at the last reference's aspect / Picture 1's own size
MIN_AREA = SIZE_MULTIPLE * SIZE_MULTIPLE  # smallest reference area: one 32 px step of the sizing rule per side
MAX_AREA = MAX_SIDE * MAX_SIDE  # = images.MAX_PIXELS


class ImageError(ValueError):
    """An image file, array or size cannot be used; the message names it and says why (``images`` re-exports it)."""


def calculate_dimensions(target_area: float, aspect: float) -> tuple[int, int]:
    """(width, height) of about ``target_area`` pixels at ``aspect`` = width / height, sides multiples of 32.

    Python's ``round`` (half to even) is used on purpose: it is what the reference uses, and sizes must agree.
    """
    if not (math.isfinite(aspect) and aspect > 0):
        raise ImageError(f"aspect must be a positive finite number, got {aspect!r}")
    if not (math.isfinite(target_area) and target_area > 0):
        raise ImageError(f"target_area must be a positive finite number, got {target_area!r}")
    width = math.sqrt(target_area * aspect)
    height = width / aspect
    return round(width / SIZE_MULTIPLE) * SIZE_MULTIPLE, round(height / SIZE_MULTIPLE) * SIZE_MULTIPLE


def check_side(name: str, value: int, unit: int, max_side: int = MAX_SIDE) -> int:
    """``value`` if the model can make a side that long, else a ``ValueError`` naming the nearest valid sizes."""
    low, high = unit, max_side // unit * unit
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of pixels, got {value!r}")
    if low <= value <= high and value % unit == 0:
        return value
    below = min(max(value // unit * unit, low), high)
    above = min(max(-(-value // unit) * unit, low), high)
    nearest = str(below) if below == above else f"{below} or {above}"
    raise ValueError(f"{name}={value} is not a size this model can make: sides are multiples of {unit} px from {low} "
                     f"to {high} (nearest: {nearest})")


def fit_side(value: int, unit: int, max_side: int = MAX_SIDE) -> int:
    """``value`` floored to the token size within the limits: for callers whose sizes come from data (a target
    image's size), not from a user who should hear that the size is not possible."""
    return min(max(value // unit * unit, unit), max_side // unit * unit)


def output_size(unit: int, area: float, aspect: float, width: int | None = None, height: int | None = None,
                max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) following the rules above; ``aspect`` = width / height of the reference it follows."""
    if width is not None:
        check_side("width", width, unit, max_side)
    if height is not None:
        check_side("height", height, unit, max_side)
    if width is not None and height is not None:
        return width, height
    if width is None and height is None:
        auto_w, auto_h = calculate_dimensions(area, aspect)
        width, height = max(auto_w // unit * unit, unit), max(auto_h // unit * unit, unit)
        given = "automatic size"
    elif height is None:
        height, given = max(round(width / aspect / unit) * unit, unit), f"width={width}"
    else:
        width, given = max(round(height * aspect / unit) * unit, unit), f"height={height}"
    if max(width, height) > max_side:
        raise ValueError(f"{given} at the reference aspect {aspect:.3g} (width/height) gives {width}x{height}, "
                         f"a side over this model's limit of {max_side} px: give a smaller side, or both width "
                         "and height")
    return width, height


def check_size_mode(mode: str) -> str:
    """``mode`` if it is one of ``SIZE_MODES``, else a ``ValueError`` naming them."""
    if not isinstance(mode, str) or mode not in SIZE_MODES:
        raise ValueError(f"size_mode must be one of {', '.join(SIZE_MODES)}, got {mode!r}")
    return mode


def check_area(name: str, value: int | None) -> int | None:
    """A reference area in pixels (None: the model's own) if it is an integer from ``MIN_AREA`` (32x32) to
    ``MAX_AREA`` (8192x8192), else a ``ValueError`` naming ``name`` and the range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_AREA <= value <= MAX_AREA:
        raise ValueError(f"{name} must be an integer number of pixels from {MIN_AREA} (32x32) to {MAX_AREA} "
                         f"(8192x8192), e.g. {1024 * 1024} for about 1024x1024; got {value!r}")
    return value


def match_canvas(unit: int, width: int, height: int, width_given: int | None = None,
                 height_given: int | None = None, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) the model makes for size mode ``"match"``: Picture 1's ``width`` x ``height`` with each
    side rounded UP to the token size ``unit`` (padding of less than one token, cropped off afterwards).

    A requested width or height conflicts with taking the size from Picture 1 and is refused, as is a side over
    the model's limit."""
    if width_given is not None or height_given is not None:
        raise ValueError("size_mode='match' takes the output size from Picture 1: leave width and height unset "
                         "(0 in the node), or use size_mode='area'")
    canvas_w, canvas_h = -(-width // unit) * unit, -(-height // unit) * unit
    if max(canvas_w, canvas_h) > max_side // unit * unit:
        raise ValueError(f"size_mode='match': Picture 1 is {width}x{height}, a side over this model's limit of "
                         f"{max_side // unit * unit} px; resize it first or use size_mode='area'")
    return canvas_w, canvas_h


def folder_token_size(folder: Path) -> int | None:
    """The token size of a diffusers-format model folder from its ``transformer/`` and ``vae/`` configs (the same
    fields ``config.py`` reads), or None when they cannot be read (the pipeline then checks after loading)."""
    try:
        transformer = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        patch = int(transformer.get("patch_size", 2))
        if "levels" in vae:  # the embedded default's CompactVAE
            return 2 ** int(vae["levels"]) * patch
        return 2 ** len(vae.get("temperal_downsample", (False, True, True))) * patch
    except (OSError, ValueError, TypeError, AttributeError):
        return None
