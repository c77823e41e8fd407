"""The loss curve of a run as a PNG, drawn with PIL: raw loss, its smoothed trend, optionally held-out loss.

::

    image = draw_loss_curve(steps, losses, val=(val_steps, val_losses))
    save_loss_curve("runs/x/loss_curve.png", steps, losses)            # atomic write

A plain line chart with labelled axes, "nice" ticks (1, 2, 5 x 10^k), light grid lines and a legend. The raw
per-step loss is drawn thin and light, the smoothed curve (TensorBoard's debiased exponential moving average)
thick on top. The y range follows the smoothed curve and the bulk of the raw values (98th percentile), so a few
early spikes cannot flatten the rest; points outside are clipped to the frame. Non-finite values are skipped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from firered_core.images import save_image

from .drawing import font, text_size

__all__ = ["draw_loss_curve", "nice_ticks", "save_loss_curve", "smooth"]

_RAW = (150, 180, 230)
_SMOOTH = (25, 80, 190)
_VAL = (220, 110, 30)
_AXIS = (40, 40, 40)
_GRID = (230, 230, 230)
_MARGIN = (72, 24, 40, 48)  # left, right, top, bottom


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing slider); non-finite values are skipped."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smooth: weight must lie in [0, 1), got {weight}")
    out, avg, n = [], 0.0, 0
    for v in values:
        if math.isfinite(v):
            avg, n = weight * avg + (1 - weight) * v, n + 1
        out.append(avg / (1 - weight**n) if n else math.nan)
    return out


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda candidate: abs(candidate - raw))
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.1e}"
    return f"{value:.4g}"


def _y_range(raw: np.ndarray, trend: np.ndarray, extra: np.ndarray) -> tuple[float, float]:
    raw, trend, extra = (a[np.isfinite(a)] for a in (raw, trend, extra))
    if raw.size + extra.size == 0:
        raise ValueError("draw_loss_curve: no finite loss values to draw")
    tops = [float(a.max()) for a in (trend, extra) if a.size]
    if raw.size:
        tops.append(float(np.percentile(raw, 98)))
    bottom, top = float(min(a.min() for a in (raw, trend, extra) if a.size)), max(tops)
    if top <= bottom:
        bottom, top = bottom - max(abs(bottom) * 0.1, 1e-3), top + max(abs(top) * 0.1, 1e-3)
    margin = (top - bottom) * 0.05
    return bottom - margin, top + margin


def _polyline(draw: ImageDraw.ImageDraw, xs: np.ndarray, ys: np.ndarray, box: tuple[int, int, int, int],
              x_range: tuple[float, float], y_range: tuple[float, float], color: tuple[int, int, int],
              width: int) -> None:
    left, top, right, bottom = box

    def point(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_range[0]) / (x_range[1] - x_range[0] or 1) * (right - left)
        py = bottom - (y - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top)
        return px, min(max(py, top), bottom)

    segment: list[tuple[float, float]] = []
    for x, y in zip(xs, ys):
        if math.isfinite(y):
            segment.append(point(float(x), float(y)))
            continue
        _flush(draw, segment, color, width)
        segment = []
    _flush(draw, segment, color, width)


def _flush(draw: ImageDraw.ImageDraw, segment: list[tuple[float, float]], color: tuple[int, int, int],
           width: int) -> None:
    if len(segment) > 1:
        draw.line(segment, fill=color, width=width, joint="curve")
    elif segment:
        (x, y), r = segment[0], max(width, 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x_range: tuple[float, float],
          y_range: tuple[float, float]) -> None:
    left, top, right, bottom = box
    tick_font = font(12)
    for v in nice_ticks(*y_range):
        y = bottom - (v - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top)
        draw.line((left, y, right, y), fill=_GRID)
        draw.line((left - 5, y, left, y), fill=_AXIS)
        w, h = text_size(_label(v), tick_font)
        draw.text((left - 8 - w, y - h / 2 - 2), _label(v), fill=_AXIS, font=tick_font)
    for v in nice_ticks(*x_range):
        x = left + (v - x_range[0]) / (x_range[1] - x_range[0] or 1) * (right - left)
        draw.line((x, top, x, bottom), fill=_GRID)
        draw.line((x, bottom, x, bottom + 5), fill=_AXIS)
        text = _label(v) if v != int(v) else str(int(v))
        draw.text((x - text_size(text, tick_font)[0] / 2, bottom + 8), text, fill=_AXIS, font=tick_font)
    draw.line((left, top, left, bottom), fill=_AXIS, width=2)
    draw.line((left, bottom, right, bottom), fill=_AXIS, width=2)


def _legend(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
            entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    legend_font = font(12)
    right, y = box[2] - 8, box[1] + 8
    width = max(text_size(name, legend_font)[0] for name, _ in entries) + 34
    draw.rectangle((right - width, y - 4, right, y + 18 * len(entries)), fill=(255, 255, 255), outline=_GRID)
    for name, color in entries:
        draw.line((right - width + 6, y + 7, right - width + 26, y + 7), fill=color, width=3)
        draw.text((right - width + 30, y), name, fill=_AXIS, font=legend_font)
        y += 18


def draw_loss_curve(steps: Sequence[float], losses: Sequence[float], *, size: tuple[int, int] = (960, 540),
                    smoothing: float = 0.9, title: str = "training loss",
                    val: tuple[Sequence[float], Sequence[float]] | None = None) -> Image.Image:
    """An RGB line chart of ``losses`` over ``steps`` (raw + smoothed), with ``val`` = (steps, losses) if given."""
    if len(steps) != len(losses):
        raise ValueError(f"draw_loss_curve: {len(steps)} steps but {len(losses)} losses")
    if size[0] < 200 or size[1] < 150:
        raise ValueError(f"draw_loss_curve: size must be at least 200 x 150, got {size}")
    xs, raw = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    trend = np.asarray(smooth(raw.tolist(), smoothing))
    val_x, val_y = (np.asarray(val[0], np.float64), np.asarray(val[1], np.float64)) if val else (np.empty(0),) * 2
    y_range = _y_range(raw, trend, val_y)
    all_x = np.concatenate([xs, val_x])
    x_range = (float(all_x.min()), float(all_x.max())) if all_x.size else (0.0, 1.0)
    if x_range[1] == x_range[0]:
        x_range = (x_range[0] - 1, x_range[1] + 1)
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (_MARGIN[0], _MARGIN[2], size[0] - _MARGIN[1], size[1] - _MARGIN[3])
    _axes(draw, box, x_range, y_range)
    _polyline(draw, xs, raw, box, x_range, y_range, _RAW, 1)
    _polyline(draw, xs, trend, box, x_range, y_range, _SMOOTH, 2)
    entries = [("raw", _RAW), (f"smoothed ({smoothing:g})", _SMOOTH)]
    if val is not None:
        _polyline(draw, val_x, val_y, box, x_range, y_range, _VAL, 2)
        entries.append(("held-out", _VAL))
    _legend(draw, box, entries)
    draw.text((box[0], 10), title, fill=_AXIS, font=font(16))
    draw.text(((box[0] + box[2]) / 2 - text_size("step", font(12))[0] / 2, size[1] - 20), "step", fill=_AXIS,
              font=font(12))
    draw.text((8, box[1] - 26), "loss", fill=_AXIS, font=font(12))
    return image


def save_loss_curve(path: str | os.PathLike, steps: Sequence[float], losses: Sequence[float], *,
                    overwrite: bool = True, **options: object) -> Path:
    """Draw the curve and write it atomically to ``path`` (.png); it is the run's own output, so by default an
    older curve of the same run is replaced."""
    image = draw_loss_curve(steps, losses, **options)  # type: ignore[arg-type]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_image(image, path, overwrite=overwrite)
