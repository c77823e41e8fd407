"""The synthetic benchmark's report folder: ``report.html``, ``table.md``, ``grid_<category>.png``, ``results.json``.

Each grid has one row per graded sample (at most ``max_rows``): the sources, the model's result (framed green
when the check passed, red when it failed) and the exact target. The folder is written under a temporary name
and renamed into place, so a killed run never leaves half a report, and an existing report is replaced only
when the caller allows it.

``table.md`` is the per-category table in Markdown. ``update_marked_table`` puts it into a document (the README,
the model card) between the lines ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->``, so the
published tables are the benchmark's own output, not copies made by hand.

Public API: ``write_report``, ``markdown_table``, ``settings_line``, ``marked_block``, ``update_marked_table``,
``TABLE_START``, ``TABLE_END``.
"""

from __future__ import annotations

import html
import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from firered_core.loading.save import swap_into_place

from .summary import most_missed, share

__all__ = ["write_report", "markdown_table", "settings_line", "marked_block", "update_marked_table", "TABLE_START", "TABLE_END"]

TABLE_START, TABLE_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"

_PASS, _FAIL, _GAP = (40, 170, 60), (210, 40, 40), (255, 255, 255)


def _grid(rows: Sequence[tuple[Any, Image.Image, bool]], scale: int = 2, max_sources: int = 2) -> Image.Image:
    """rows of (sample, result, passed) -> one image: sources | result | target."""
    side = rows[0][0].target.size[0] * scale
    pad = 4
    cols = max_sources + 2
    grid = Image.new("RGB", (cols * (side + pad) + pad, len(rows) * (side + pad) + pad), _GAP)
    draw = ImageDraw.Draw(grid)
    for r, (sample, result, passed) in enumerate(rows):
        y = pad + r * (side + pad)
        tiles = [*sample.sources] + [None] * (max_sources - len(sample.sources)) + [result, sample.target]
        for c, tile in enumerate(tiles):
            x = pad + c * (side + pad)
            if tile is None:
                continue
            grid.paste(tile.convert("RGB").resize((side, side), Image.NEAREST), (x, y))
            if c == max_sources:
                draw.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], outline=_PASS if passed else _FAIL,
                               width=2)
    return grid


def _html(summary: dict[str, Any], results: Sequence[Any], grids: dict[str, str]) -> str:
    rows = []
    for task, f in summary["categories"].items():
        rows.append(f"<tr><td>{html.escape(task)}</td><td>{f['n']}</td><td>{100 * f['success']:.1f}%</td>"
                    f"<td>{f['psnr_to_target']:.2f}</td><td>{share(f['closer_than_source'])}</td>"
                    f"<td>{share(f.get('ceiling'))}</td><td>{html.escape(most_missed(f))}</td></tr>")
    overall = summary["overall"]
    sections = []
    for task, name in grids.items():
        examples = [r for r in results if r.task == task][:3]
        notes = "".join(f"<li>{html.escape(r.instruction)}: {'pass' if r.passed else 'fail'} "
                        f"{html.escape('; '.join(r.failures))}</li>" for r in examples)
        sections.append(f"<h2>{html.escape(task)}</h2><p>sources | result (green: passed, red: failed) | "
                        f"target</p><img src='{name}'><ul>{notes}</ul>")
    return ("<!doctype html><meta charset='utf-8'><title>FireRed synthetic benchmark</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:right}img{image-rendering:"
            "pixelated}</style>"
            f"<h1>Synthetic held-out benchmark: overall {100 * overall['success']:.1f}%</h1>"
            f"<p>model {html.escape(str(summary.get('model')))}, {summary.get('steps')} steps, true CFG "
            f"{summary.get('true_cfg_scale')}, "
            f"keep_unedited {'on' if summary.get('keep_unedited') else 'off'}, "
            f"{summary.get('per_category')} samples per category, {summary.get('seconds')} s</p>"
            "<table><tr><th>category</th><th>n</th><th>success</th><th>PSNR to target</th>"
            "<th>closer than source</th><th>ceiling (target through the VAE)</th><th>most often missed check</th>"
            "</tr>" + "".join(rows) + "</table>" + "".join(sections))


def markdown_table(summary: dict[str, Any]) -> str:
    """The per-category table (success, PSNR to target, closer than source, VAE ceiling, the check missed most
    often) and the overall row."""
    lines = ["| category | n | success | mean PSNR to target (dB) | closer to target than source | "
             "ceiling: target through the VAE | most often missed check |", "|---|---|---|---|---|---|---|"]
    for task, f in summary["categories"].items():
        lines.append(f"| {task} | {f['n']} | {100 * f['success']:.1f}% | {f['psnr_to_target']:.2f} | "
                     f"{share(f['closer_than_source'])} | {share(f.get('ceiling'))} | {most_missed(f)} |")
    o = summary["overall"]
    closer = "-" if o["closer_than_source"] is None else f"{100 * o['closer_than_source']:.1f}%"
    ceiling = "-" if o.get("ceiling") is None else f"{100 * o['ceiling']:.1f}%"
    lines.append(f"| **overall** | {o['n']} | **{100 * o['success']:.1f}%** | | {closer} of {o['n_with_source']} "
                 f"edits with a source | {ceiling} | |")
    if "steps" in summary:
        lines += ["", settings_line(summary)]
    return "\n".join(lines)


def settings_line(summary: dict[str, Any]) -> str:
    """How the benchmark ran: sampling steps (stochastic or Euler), CFG, whether Picture 1 was kept outside the
    edit, held-out seed."""
    kept = "on" if summary.get("keep_unedited") else "off"
    sampler = "stochastic" if summary.get("sampler") == "stochastic" else "Euler"
    return (f"Settings: {summary['steps']} {sampler} steps, true CFG {summary['true_cfg_scale']:g}, keep Picture 1 "
            f"outside the edit (keep_unedited) {kept}, held-out seed {summary.get('seed', 0)}, "
            f"{summary.get('per_category', '?')} per category.")


def marked_block(path: Path) -> tuple[str, str]:
    """``path``'s text before ``TABLE_START`` and after ``TABLE_END``; ValueError unless it holds one of each, in
    that order."""
    text = Path(path).read_text(encoding="utf-8")
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_START) > text.index(TABLE_END):
        raise ValueError(f"{path}: needs exactly one {TABLE_START} line before one {TABLE_END} line to put the "
                         "benchmark table between")
    head, rest = text.split(TABLE_START)
    return head, rest.split(TABLE_END)[1]


def update_marked_table(path: Path, table: str) -> None:
    """Replace what lies between ``TABLE_START`` and ``TABLE_END`` in ``path`` by ``table`` (atomically)."""
    path = Path(path)
    head, tail = marked_block(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}", encoding="utf-8")
    tmp.replace(path)


def write_report(out: Path, summary: dict[str, Any], results: Sequence[Any],
                 images: Sequence[tuple[Any, Image.Image]], *, overwrite: bool = False, max_rows: int = 8) -> Path:
    """Write the report folder ``out`` atomically; returns it."""
    out = Path(out)
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists; pass overwrite to replace the report")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()
    try:
        grids: dict[str, str] = {}
        for task in summary["categories"]:
            rows = [(s, img, r.passed) for (s, img), r in zip(images, results) if r.task == task][:max_rows]
            grids[task] = f"grid_{task}.png"
            _grid(rows, max_sources=max(2, max(len(s.sources) for s, _, _ in rows))).save(staging / grids[task])
        (staging / "report.html").write_text(_html(summary, results, grids), encoding="utf-8")
        (staging / "table.md").write_text(markdown_table(summary) + "\n", encoding="utf-8")
        (staging / "results.json").write_text(json.dumps({"summary": summary,
                                                          "samples": [asdict(r) for r in results]},
                                                         indent=1, default=str) + "\n", encoding="utf-8")
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
