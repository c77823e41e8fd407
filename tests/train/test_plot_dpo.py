"""``scripts/plot_dpo.py``: reads DPO runs' metrics, draws diff_w / diff_l per run, summarises them; bad input is
named."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_dpo.py"


@pytest.fixture(scope="module")
def plot_dpo():
    spec = importlib.util.spec_from_file_location("plot_dpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["plot_dpo"] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("plot_dpo", None)


def _write_run(folder: Path, diff_w: list[float], diff_l: list[float], extra: list[str] = ()) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": 0, "event": "start"})]  # a line without the DPO keys is left out
    for i, (w, l) in enumerate(zip(diff_w, diff_l)):
        lines.append(json.dumps({"step": 5 * (i + 1), "loss": 0.7, "diff_w": w, "diff_l": l,
                                 "accuracy": 0.5 + 0.01 * i, "reward_margin": 0.1 * i}))
    lines += list(extra)
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_load_run_keeps_dpo_lines_in_step_order(plot_dpo, tmp_path: Path) -> None:
    run = _write_run(tmp_path / "plain", [0.001, 0.002, 0.003], [0.002, 0.004, 0.008],
                     extra=[json.dumps({"step": 5, "diff_w": 0.0015, "diff_l": 0.0025}),  # a resumed step: last wins
                            "{torn"])
    label, metrics = plot_dpo.parse_run_arg(str(run))
    curves = plot_dpo.load_run(label, metrics)
    assert curves.label == "plain"
    assert curves.steps == [5, 10, 15]
    assert curves.diff_w == [0.0015, 0.002, 0.003]
    assert curves.diff_l == [0.0025, 0.004, 0.008]
    assert math.isnan(curves.accuracy[0]) and curves.accuracy[1] == pytest.approx(0.51)


def test_summary_table_gives_last_mean_and_tail_per_run(plot_dpo, tmp_path: Path) -> None:
    a = plot_dpo.load_run(*plot_dpo.parse_run_arg(f"up={_write_run(tmp_path / 'a', [0.0, 0.002, 0.004, 0.006], [0.0, 0.004, 0.008, 0.012])}"))
    b = plot_dpo.load_run(*plot_dpo.parse_run_arg(str(_write_run(tmp_path / "b", [-0.001] * 4, [0.001] * 4))))
    table = plot_dpo.summary_table([a, b]).splitlines()
    assert len(table) == 4
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    # label, steps, diff_w last / mean / last quarter, diff_l last / mean / last quarter (x 1e3)
    assert cells[:8] == ["up", "20", "+6.000", "+3.000", "+6.000", "+12.000", "+6.000", "+12.000"]
    assert [c.strip() for c in table[3].strip("|").split("|")][:3] == ["b", "20", "-1.000"]


def test_plot_writes_png_with_both_panels_and_refuses_to_overwrite(plot_dpo, tmp_path: Path, capsys) -> None:
    runs = [_write_run(tmp_path / "plain", [0.001 * i for i in range(12)], [0.002 * i for i in range(12)]),
            _write_run(tmp_path / "asym", [-0.001 * i for i in range(12)], [0.001 * i for i in range(12)])]
    out = tmp_path / "figs" / "dpo.png"
    out.parent.mkdir()
    assert plot_dpo.main([str(runs[0]), f"omega 3={runs[1]}", "--out", str(out), "--smooth", "3"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 100
    assert [p.name for p in out.parent.iterdir()] == ["dpo.png"]  # no temporary file left behind
    printed = capsys.readouterr().out
    assert "| plain | 60 |" in printed and "| omega 3 | 60 |" in printed
    before = out.read_bytes()
    assert plot_dpo.main([str(runs[0]), "--out", str(out)]) == 2  # exists, no --overwrite
    assert out.read_bytes() == before
    assert plot_dpo.main([str(runs[0]), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != before  # one run drawn now, not two


def test_bad_input_is_named(plot_dpo, tmp_path: Path, caplog) -> None:
    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.3}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no line with a step and finite diff_w"):
        plot_dpo.load_run(*plot_dpo.parse_run_arg(str(flow)))
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plot_dpo.parse_run_arg(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no path after the label"):
        plot_dpo.parse_run_arg("plain=")
    run = _write_run(tmp_path / "plain", [0.001], [0.002])
    assert plot_dpo.main([str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must be a .png" in caplog.text
    assert plot_dpo.main([str(run), "--out", str(tmp_path / "nowhere" / "x.png")]) == 2
    assert "does not exist" in caplog.text


def test_smooth_is_a_centred_moving_average(plot_dpo) -> None:
    assert plot_dpo.smooth([0.0, 3.0, 6.0, 9.0], 3) == [1.5, 3.0, 6.0, 7.5]
    assert plot_dpo.smooth([1.0, math.nan, 3.0], 3) == [1.0, 2.0, 3.0]
    assert plot_dpo.smooth([1.0, 2.0], 1) == [1.0, 2.0]
