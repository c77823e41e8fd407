"""Observability: sample grids, loss-curve PNG, per-timestep loss bins, metrics JSONL, TensorBoard, progress bar."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firered_train.observe import (MetricsLog, TensorBoardLogger, TimestepLossBins, TrainProgress, ValidationSample,
                                   draw_loss_curve, grid_size, nice_ticks, read_metrics, sample_grid,
                                   save_loss_curve, smooth)
from firered_train.observe import grid as grid_mod
from firered_train.observe import tensorboard as tb_mod

RED, GREEN, BLUE, YELLOW = (200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20)


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


# ---------------------------------------------------------------- grids
def _cell_centre(col: int, row: int, *, cell: int, pad: int, captions: bool, title: bool) -> tuple[int, int]:
    top = pad + (grid_mod.TITLE_HEIGHT if title else 0) + grid_mod.LABEL_HEIGHT
    row_height = cell + (grid_mod.CAPTION_HEIGHT if captions else 0) + pad
    return pad + col * (cell + pad) + cell // 2, top + row * row_height + cell // 2


def test_grid_layout_and_cell_contents() -> None:
    rows = [
        ValidationSample(sources=[_solid(RED), _solid(GREEN, (20, 60))], result=_solid(BLUE), target=_solid(YELLOW),
                         caption="put the hat from Picture 2 on the man in Picture 1"),
        ValidationSample(sources=[_solid(GREEN)], result=_solid(RED), target=None, caption=""),
    ]
    grid = sample_grid(rows, cell=64, pad=4, title="step 100")
    assert grid.mode == "RGB"
    assert grid.size == grid_size(2, 4, cell=64, pad=4, captions=True, title=True)
    assert grid.size == (4 + 4 * 68, 4 + 28 + 24 + 2 * (64 + 22 + 4))
    expected = {(0, 0): RED, (1, 0): GREEN, (2, 0): BLUE, (3, 0): YELLOW, (0, 1): GREEN, (2, 1): RED}
    for (col, row), color in expected.items():
        assert grid.getpixel(_cell_centre(col, row, cell=64, pad=4, captions=True, title=True)) == color
    # the second row has no second source and no target: empty grey cells
    for col in (1, 3):
        centre = _cell_centre(col, 1, cell=64, pad=4, captions=True, title=True)
        assert grid.getpixel(centre) == grid_mod._CELL_BACKGROUND


def test_grid_keeps_aspect_and_accepts_tensors() -> None:
    wide = torch.full((3, 10, 40), -1.0)
    wide[0] = 1.0  # [-1, 1] convention: pure red
    grid = sample_grid([ValidationSample(sources=[], result=wide)], cell=80, pad=0)
    assert grid.size == grid_size(1, 1, cell=80, pad=0, captions=False, title=False) == (80, 24 + 80)
    # 40x10 scaled to 80x20 and centred vertically: red in the middle band, background above and below
    assert grid.getpixel((40, 24 + 40)) == (255, 0, 0)
    assert grid.getpixel((40, 24 + 10)) == grid_mod._CELL_BACKGROUND


def test_grid_single_source_label_and_errors() -> None:
    row = ValidationSample(sources=[_solid(RED)], result=_solid(BLUE), caption="图2 变成红色")
    grid = sample_grid([row], cell=32)
    assert grid.size[0] == grid_size(1, 2, cell=32, pad=8, captions=True, title=False)[0]
    with pytest.raises(ValueError, match="no samples"):
        sample_grid([])
    with pytest.raises(ValueError, match="cell must be"):
        sample_grid([ValidationSample(result=_solid(RED))], cell=4)


# ---------------------------------------------------------------- loss curve
def test_loss_curve_png(tmp_path: Path) -> None:
    steps = list(range(1, 301))
    rng = np.random.default_rng(0)
    losses = [math.exp(-s / 80) + 0.1 + 0.05 * float(rng.random()) for s in steps]
    losses[50] = math.nan  # a NaN step leaves a gap, not a crash
    out = save_loss_curve(tmp_path / "plots" / "loss_curve.png", steps, losses, size=(640, 400),
                          val=([100, 200, 300], [0.4, 0.25, 0.2]))
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    image = Image.open(out).convert("RGB")
    assert image.size == (640, 400)
    pixels = np.asarray(image).reshape(-1, 3)
    assert (pixels != 255).any(axis=1).mean() > 0.02  # far from blank
    colours = {tuple(p) for p in pixels}
    from firered_train.observe import loss_curve as lc
    assert {lc._RAW, lc._SMOOTH, lc._VAL} <= colours  # all three series are drawn
    # the curve falls: smoothed-colour pixels on the left sit higher (smaller y) than on the right
    arr = np.asarray(image)
    ys, xs = np.nonzero(np.all(arr == lc._SMOOTH, axis=-1))
    left, right = ys[xs < 200].mean(), ys[xs > 500].mean()
    assert left < right
    save_loss_curve(out, steps, losses)  # the run's own output: replaced on the next call
    with pytest.raises(FileExistsError):
        save_loss_curve(out, steps, losses, overwrite=False)


def test_loss_curve_edge_cases() -> None:
    assert draw_loss_curve([5], [0.3], size=(300, 200)).size == (300, 200)  # one point
    assert draw_loss_curve([1, 2, 3], [0.5, 0.5, 0.5]).size == (960, 540)  # flat
    with pytest.raises(ValueError, match="no finite loss"):
        draw_loss_curve([1, 2], [math.nan, math.inf])
    with pytest.raises(ValueError, match="2 steps but 1 losses"):
        draw_loss_curve([1, 2], [0.1])


def test_smooth_and_ticks() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no ramp from zero
    out = smooth([1.0, 3.0], weight=0.5)
    assert out == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
    assert math.isnan(smooth([math.nan, 1.0])[0]) and smooth([math.nan, 1.0])[1] == 1.0
    assert nice_ticks(0.1, 1.1) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(1, 500) == [100, 200, 300, 400, 500]
    assert nice_ticks(-3, 7) == [-2, 0, 2, 4, 6]


# ---------------------------------------------------------------- timestep bins
def test_bins_hand_computed() -> None:
    bins = TimestepLossBins(4)
    bins.update(torch.tensor([0.0, 0.1, 0.3, 0.5, 0.99, 1.0]), torch.tensor([1.0, 3.0, 5.0, 7.0, 2.0, 4.0]))
    bins.update(torch.tensor([0.26]), torch.tensor([1.0]))
    assert bins.means() == [2.0, 3.0, 7.0, 3.0]  # s = 1 belongs to the last bin
    assert bins.counts.tolist() == [2, 2, 1, 2]
    assert bins.labels() == ["0.00-0.25", "0.25-0.50", "0.50-0.75", "0.75-1.00"]
    assert bins.scalars("bins") == {"bins/0.00-0.25": 2.0, "bins/0.25-0.50": 3.0, "bins/0.50-0.75": 7.0,
                                    "bins/0.75-1.00": 3.0}
    state = bins.state_dict()
    bins.reset()
    assert bins.means() == [None] * 4 and bins.scalars() == {}
    bins.load_state_dict(state)
    assert bins.means() == [2.0, 3.0, 7.0, 3.0]


def test_bins_labels_and_errors() -> None:
    assert TimestepLossBins(10).labels()[:2] == ["0.0-0.1", "0.1-0.2"]
    bins = TimestepLossBins(10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        bins.update(torch.tensor([500.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="2 timesteps but 1 losses"):
        bins.update(torch.tensor([0.1, 0.2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="3 bins"):
        bins.load_state_dict(TimestepLossBins(3).state_dict())


# ---------------------------------------------------------------- metrics log
def test_metrics_log_appends_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write(1, loss=torch.tensor(0.5), lr=np.float32(1e-3), bins={"0.0-0.1": 0.2})
        log.write(2, loss=math.nan, note="warm-up")
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == 0.5 and records[0]["lr"] == pytest.approx(1e-3)
    assert records[0]["bins"]["0.0-0.1"] == 0.2
    assert records[1]["loss"] is None  # NaN stays standard JSON
    for line in path.read_text().splitlines():
        json.loads(line)
    with pytest.raises(TypeError, match="cannot log"):
        MetricsLog(path).write(3, bad=object())


def test_metrics_log_repairs_a_torn_tail_and_rewinds(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in range(1, 6):
            log.write(step, loss=1.0 / step)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 6, "lo')  # a process killed mid-write
    with MetricsLog(path) as log:  # opening cuts the torn line
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
        assert log.rewind(3) == 2  # a resume from step 3 forgets steps 4 and 5
        log.write(4, loss=0.3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert read_metrics(path)[-1]["loss"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ---------------------------------------------------------------- tensorboard
def test_tensorboard_writes_events_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with TensorBoardLogger(tmp_path / "tb") as tb:
        assert tb.active
        tb.scalars(1, {"loss": 0.5, "loss_by_t/0.0-0.1": 0.25})
        tb.image("samples", _solid(RED), 1)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100


def test_tensorboard_missing_is_one_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    tb_mod._writer_class.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=tb_mod.__name__):
            loggers = [TensorBoardLogger(tmp_path / "tb") for _ in range(3)]
        assert not any(lg.active for lg in loggers)
        loggers[0].scalars(1, {"loss": 1.0})  # no-ops
        loggers[0].image("x", _solid(RED), 1)
        notices = [r for r in caplog.records if "tensorboard package is not installed" in r.getMessage()]
        assert len(notices) == 1 and "pip install tensorboard" in notices[0].getMessage()
        assert not (tmp_path / "tb").exists()
    finally:
        tb_mod._writer_class.cache_clear()
    assert not TensorBoardLogger(tmp_path / "off", enabled=False).active


# ---------------------------------------------------------------- progress bar
def test_progress_bar_shows_smoothed_loss_and_resumes() -> None:
    out = io.StringIO()
    with TrainProgress(10, start_step=4, file=out, loss_smoothing=0.5) as bar:
        assert bar.step == 4 and bar.smoothed_loss is None
        bar.update(5, loss=1.0, lr=1e-4)
        bar.update(6, loss=3.0)
        bar.update(7, loss=math.nan)  # ignored by the average
        assert bar.step == 7
        assert bar.smoothed_loss == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    text = out.getvalue()
    assert "7/10" in text and "loss=" in text
    with pytest.raises(ValueError, match="start_step"):
        TrainProgress(5, start_step=6)
    silent = io.StringIO()
    with TrainProgress(3, enabled=False, file=silent) as bar:
        bar.update(1, loss=0.1)
    assert silent.getvalue() == ""
