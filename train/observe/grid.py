"""Validation sample grids: one row per sample, columns source 1..N | result | target, labelled.

::

    rows = [ValidationSample(sources=[src], result=out, target=tgt, caption="make the sky pink")]
    grid = sample_grid(rows, cell=256, title="step 500")
    save_image(grid, "runs/x/samples/step-000500.png")       # firered_core.images: atomic

Images may be PIL images or tensors ``[3, H, W]`` / ``[1, 3, H, W]`` in [-1, 1] (the project's convention at the
VAE boundary). Each is scaled to fit a ``cell`` x ``cell`` square with its aspect kept and centred on a grey
background; rows with fewer sources than the widest row leave those cells empty. The caption (the instruction the
model saw) is written under the row, cut to the row's width. The layout is a pure function of the number of rows
and columns (``grid_size``), so grids of one run line up in any image viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from firered_core.images import to_pil

from .drawing import fit_text, font, text_size

__all__ = ["CAPTION_HEIGHT", "LABEL_HEIGHT", "TITLE_HEIGHT", "ValidationSample", "grid_size", "sample_grid"]

ImageLike = Image.Image | torch.Tensor

LABEL_HEIGHT = 24  # column labels above the first row
CAPTION_HEIGHT = 22  # one line of instruction under each row (only when some sample has a caption)
TITLE_HEIGHT = 28  # optional title line at the top
_BACKGROUND = (255, 255, 255)
_CELL_BACKGROUND = (224, 224, 224)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)


@dataclass
class ValidationSample:
    """One row of a grid."""

    sources: Sequence[ImageLike] = field(default_factory=list)  # 0-3 inputs, in the order the model saw them
    result: ImageLike | None = None  # what the model made
    target: ImageLike | None = None  # ground truth, when the sample has one
    caption: str = ""  # the instruction


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, torch.Tensor):
        return to_pil(image.detach().float().cpu())
    return image.convert("RGB")


def _fit(image: Image.Image, cell: int) -> Image.Image:
    scale = cell / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _columns(samples: Sequence[ValidationSample]) -> list[str]:
    n_sources = max((len(s.sources) for s in samples), default=0)
    labels = [f"source {i + 1}" if n_sources > 1 else "source" for i in range(n_sources)]
    labels.append("result")
    if any(s.target is not None for s in samples):
        labels.append("target")
    return labels


def grid_size(n_rows: int, n_columns: int, *, cell: int, pad: int, captions: bool, title: bool) -> tuple[int, int]:
    """Width and height in pixels of a grid with these rows and columns."""
    width = pad + n_columns * (cell + pad)
    row = cell + (CAPTION_HEIGHT if captions else 0) + pad
    height = pad + (TITLE_HEIGHT if title else 0) + LABEL_HEIGHT + n_rows * row
    return width, height


def sample_grid(samples: Sequence[ValidationSample], *, cell: int = 256, pad: int = 8,
                title: str | None = None) -> Image.Image:
    """One RGB image: labelled columns source(s) | result | target, one row per sample."""
    if not samples:
        raise ValueError("sample_grid: no samples")
    if cell < 16 or pad < 0:
        raise ValueError(f"sample_grid: cell must be >= 16 and pad >= 0, got cell={cell}, pad={pad}")
    labels = _columns(samples)
    captions = any(s.caption for s in samples)
    width, height = grid_size(len(samples), len(labels), cell=cell, pad=pad, captions=captions, title=bool(title))
    grid = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    label_font, caption_font = font(14), font(13)
    y = pad
    if title:
        draw.text((pad, y + 2), fit_text(title, font(18), width - 2 * pad), fill=_TEXT, font=font(18))
        y += TITLE_HEIGHT
    for col, label in enumerate(labels):
        text = fit_text(label, label_font, cell)
        x = pad + col * (cell + pad) + (cell - text_size(text, label_font)[0]) // 2
        draw.text((x, y + 3), text, fill=_TEXT, font=label_font)
    y += LABEL_HEIGHT
    n_sources = len(labels) - 1 - ("target" in labels)
    for sample in samples:
        cells: list[ImageLike | None] = list(sample.sources) + [None] * (n_sources - len(sample.sources))
        cells.append(sample.result)
        if "target" in labels:
            cells.append(sample.target)
        for col, image in enumerate(cells):
            x = pad + col * (cell + pad)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=_CELL_BACKGROUND)
            if image is None:
                continue
            fitted = _fit(_as_pil(image), cell)
            grid.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        y += cell
        if captions:
            text = fit_text(sample.caption or "(no instruction)", caption_font, width - 2 * pad)
            draw.text((pad, y + 3), text, fill=_TEXT if sample.caption else _MUTED, font=caption_font)
            y += CAPTION_HEIGHT
        y += pad
    return grid
