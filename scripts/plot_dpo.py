"""Plot ``diff_w`` and ``diff_l`` of DPO runs over their steps, one line per run, and print a summary table.

::

    .venv/bin/python scripts/plot_dpo.py runs/dpo_dd_plain runs/dpo_dd_asym --out docs/dpo_double_degradation.png
    .venv/bin/python scripts/plot_dpo.py plain=runs/dpo_dd_plain/metrics.jsonl ... --out diff.png --smooth 5

Each run is a run folder (its ``metrics.jsonl`` is read) or a metrics file, optionally labelled ``label=path``
(default label: the folder's name). Only training lines carrying ``diff_w`` and ``diff_l`` (what a DPO run logs,
``firered_train.objectives.dpo``) are used; a run without any is an error naming it. ``diff_w`` is the trained
model's flow loss on the winner minus the reference's, ``diff_l`` the same on the loser: both above zero is the
"double degradation". The figure (drawn with PIL, like the trainer's loss curve) has two panels (winner, loser)
with a zero line; ``--smooth N`` draws a centred moving average of N logged points over the raw values (drawn
faint). The PNG is written atomically (``firered_core.images.save_image``); an existing file is replaced only with
``--overwrite``.

The table printed (Markdown) gives per run: steps, the last logged and the mean ``diff_w`` / ``diff_l``, the mean
over the last quarter of the logged points, and the last ``accuracy`` and ``reward_margin`` when logged.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from firered_core.images import save_image
from firered_train.observe import nice_ticks, read_metrics
from firered_train.observe.drawing import font, text_size

log = logging.getLogger("plot_dpo")

KEYS = ("diff_w", "diff_l")


@dataclass(frozen=True)
class RunCurves:
    """The logged DPO values of one run, in step order."""

    label: str
    steps: list[int]
    diff_w: list[float]
    diff_l: list[float]
    accuracy: list[float]
    reward_margin: list[float]


def parse_run_arg(arg: str) -> tuple[str, Path]:
    """``label=path`` or ``path`` -> (label, metrics file); a folder means its ``metrics.jsonl``."""
    label, sep, path_s = arg.partition("=")
    if not sep:
        label, path_s = "", arg
    if not path_s:
        raise ValueError(f"run {arg!r}: no path after the label")
    path = Path(path_s)
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics.is_file():
        raise FileNotFoundError(f"run {arg!r}: no metrics file at {metrics}")
    if not label:
        label = metrics.parent.name if metrics.name == "metrics.jsonl" else metrics.stem
    return label, metrics


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def load_run(label: str, metrics: Path) -> RunCurves:
    """The run's lines with finite ``diff_w``, ``diff_l`` and an integer ``step``, sorted by step (a resumed run's
    repeated steps keep their last line)."""
    by_step: dict[int, dict] = {}
    for record in read_metrics(metrics):
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        if all(_number(record, k) is not None for k in KEYS):
            by_step[step] = record
    if not by_step:
        raise ValueError(f"{metrics}: no line with a step and finite diff_w and diff_l (is it a DPO run's "
                         "metrics.jsonl?)")
    steps = sorted(by_step)
    rows = [by_step[s] for s in steps]

    def column(key: str) -> list[float]:
        values = [_number(r, key) for r in rows]
        return [math.nan if v is None else v for v in values]

    return RunCurves(label, steps, column("diff_w"), column("diff_l"), column("accuracy"),
                     column("reward_margin"))


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over ``window`` points (shrinking at the ends); ``window <= 1`` returns a copy."""
    if window <= 1:
        return list(values)
    half = window // 2
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - half):i + half + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summary_table(runs: Sequence[RunCurves]) -> str:
    """A Markdown table of the runs' final and mean differences (values x 1e3)."""
    head = ("| run | steps | 1e3 diff_w last | mean | last 25 % | 1e3 diff_l last | mean | last 25 % | accuracy last "
            "| reward_margin last |")
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        tail = max(1, len(r.steps) // 4)
        cells = [r.label, str(r.steps[-1])]
        for values in (r.diff_w, r.diff_l):
            cells += [f"{1e3 * values[-1]:+.3f}", f"{1e3 * _mean(values):+.3f}", f"{1e3 * _mean(values[-tail:]):+.3f}"]
        cells += [f"{r.accuracy[-1]:.2f}", f"{r.reward_margin[-1]:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_COLORS = ((200, 60, 40), (30, 110, 200), (40, 150, 70), (150, 80, 180), (210, 140, 20), (90, 90, 90))
_AXIS, _GRID = (40, 40, 40), (228, 228, 228)
_PANEL = (470, 330)  # one panel's size in pixels
_MARGIN = (64, 14, 34, 40)  # left, right, top, bottom inside a panel


def _faint(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(255 - 0.3 * (255 - c)) for c in color)  # type: ignore[return-value]


def _label(value: float) -> str:
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], runs: Sequence[RunCurves], key: str,
                title: str, smooth_window: int) -> None:
    """One panel: ``key`` (x 1e3) of every run over steps, a zero line, ticks, a title."""
    x0, y0 = origin
    left, top = x0 + _MARGIN[0], y0 + _MARGIN[2]
    right, bottom = x0 + _PANEL[0] - _MARGIN[1], y0 + _PANEL[1] - _MARGIN[3]
    series = [(run, [1e3 * v for v in getattr(run, key)]) for run in runs]
    ys = [v for _, values in series for v in values if math.isfinite(v)] + [0.0]
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.06 or 1.0
    lo, hi = lo - pad, hi + pad
    xmin = min(r.steps[0] for r in runs)
    xmax = max(max(r.steps[-1] for r in runs), xmin + 1)

    def px(x: float) -> float:
        return left + (x - xmin) / (xmax - xmin) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - lo) / (hi - lo) * (bottom - top)

    small = font(11)
    for v in nice_ticks(lo, hi, 6):
        draw.line((left, py(v), right, py(v)), fill=_GRID)
        w, h = text_size(_label(v), small)
        draw.text((left - 6 - w, py(v) - h / 2 - 2), _label(v), fill=_AXIS, font=small)
    for v in nice_ticks(xmin, xmax, 5):
        draw.line((px(v), top, px(v), bottom), fill=_GRID)
        text = _label(v)
        draw.text((px(v) - text_size(text, small)[0] / 2, bottom + 6), text, fill=_AXIS, font=small)
    draw.line((left, py(0.0), right, py(0.0)), fill=_AXIS, width=1)
    draw.line((left, top, left, bottom), fill=_AXIS, width=2)
    draw.line((left, bottom, right, bottom), fill=_AXIS, width=2)
    for i, (run, values) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        layers = [(values, _faint(color), 1), (smooth(values, smooth_window), color, 2)] if smooth_window > 1 \
            else [(values, color, 2)]
        for ys_, fill, width in layers:
            points = [(px(x), py(y)) for x, y in zip(run.steps, ys_) if math.isfinite(y)]
            if len(points) > 1:
                draw.line(points, fill=fill, width=width, joint="curve")
            elif points:
                (x, y), r = points[0], 2
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    draw.text((left, y0 + 8), title, fill=_AXIS, font=font(13))
    draw.text(((left + right) / 2 - text_size("step", small)[0] / 2, bottom + 22), "step", fill=_AXIS, font=small)


def draw_runs(runs: Sequence[RunCurves], *, smooth_window: int = 1, title: str | None = None) -> Image.Image:
    """Two panels side by side (winner, loser: ``diff_w`` and ``diff_l`` x 1e3) and a legend of the runs."""
    if not runs:
        raise ValueError("draw_runs: no runs to draw")
    head = 26 if title else 0
    legend_h = 20 * ((len(runs) + 2) // 3) + 8
    image = Image.new("RGB", (2 * _PANEL[0], head + _PANEL[1] + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((10, 6), title, fill=_AXIS, font=font(14))
    for i, (key, name) in enumerate(zip(KEYS, ("winner", "loser"))):
        _draw_panel(draw, (i * _PANEL[0], head), runs, key, f"{key} x 1e3: {name} loss, trained - reference",
                    smooth_window)
    small = font(12)
    for i, run in enumerate(runs):
        x, y = 20 + (i % 3) * 310, head + _PANEL[1] + 4 + 20 * (i // 3)
        draw.line((x, y + 7, x + 22, y + 7), fill=_COLORS[i % len(_COLORS)], width=3)
        draw.text((x + 28, y), run.label, fill=_AXIS, font=small)
    return image


def plot_runs(runs: Sequence[RunCurves], out: Path, *, smooth_window: int = 1, title: str | None = None,
              overwrite: bool = False) -> Path:
    """Draw the runs (``draw_runs``) and write the PNG atomically to ``out``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} of --out does not exist")
    return save_image(draw_runs(runs, smooth_window=smooth_window, title=title), out, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files, optionally label=path")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window in logged points (default 1)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="plot_dpo: %(levelname)s: %(message)s")
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    try:
        runs = [load_run(*parse_run_arg(a)) for a in args.runs]
        path = plot_runs(runs, Path(args.out), smooth_window=args.smooth, title=args.title,
                         overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        log.error("%s", e)
        return 2
    print(summary_table(runs))
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
