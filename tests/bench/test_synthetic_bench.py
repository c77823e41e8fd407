"""``firered bench synthetic``: grading, summary, table and report, with oracle 'models' of known quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from firered_bench import TASK_OPS
from firered_bench.evaluate.bench import run_benchmark
from firered_bench.evaluate.summary import format_table, most_missed, summarise
from firered_bench.evaluate.report import (TABLE_END, TABLE_START, markdown_table, update_marked_table,
                                                  write_report)


@pytest.fixture(scope="module")
def graded() -> dict[str, tuple]:
    perfect = run_benchmark(lambda s, i: s.target, 2)
    unedited = run_benchmark(lambda s, i: s.sources[0] if s.sources else Image.new("RGB", s.target.size), 2)
    return {"perfect": perfect, "unedited": unedited}


def test_the_exact_target_passes_everything_and_the_source_nothing(graded: dict[str, tuple]) -> None:
    perfect = summarise(graded["perfect"][0])
    assert set(perfect["categories"]) == set(TASK_OPS)
    assert all(f["n"] == 2 and f["success"] == 1.0 for f in perfect["categories"].values())
    assert perfect["overall"]["success"] == 1.0 and perfect["overall"]["closer_than_source"] == 1.0
    unedited = summarise(graded["unedited"][0])
    assert unedited["overall"]["success"] == 0.0
    assert unedited["overall"]["closer_than_source"] == 0.0  # equal is not closer
    assert unedited["categories"]["t2i"]["closer_than_source"] is None  # no source to compare with


def test_the_ceiling_column_grades_the_given_best_result_with_the_same_checks() -> None:
    # a "VAE" that returns the source: the ceiling must then fail everything, while the edit itself passes
    results, _ = run_benchmark(lambda s, i: s.target, 1, tasks=("color", "remove"),
                               ceiling=lambda s, i: s.sources[0])
    summary = summarise(results)
    assert summary["overall"]["success"] == 1.0 and summary["overall"]["ceiling"] == 0.0
    assert [r.ceiling_passed for r in results] == [False, False]
    table = format_table(summary)
    assert "ceiling (exact targets through the VAE, same checks): 0.0%" in table
    assert summarise(run_benchmark(lambda s, i: s.target, 1, tasks=("color",))[0])["overall"]["ceiling"] is None


def test_vae_round_trip_keeps_size_and_mode() -> None:
    import torch

    from firered_core.compact_vae import create_vae
    from firered_core.config import get_preset
    from firered_bench.evaluate.bench import vae_round_trip

    torch.manual_seed(0)
    vae = create_vae(get_preset("firered-default").vae)
    out = vae_round_trip(vae, Image.new("RGB", (64, 48), (200, 30, 30)))
    assert out.size == (64, 48) and out.mode == "RGB"


def test_table_ends_with_the_overall_line(graded: dict[str, tuple]) -> None:
    table = format_table(summarise(graded["perfect"][0]))
    assert table.splitlines()[-1] == "overall 100.0%"
    assert "color" in table and "closer to target than source: 100.0%" in table


def test_report_folder_is_complete_and_never_silently_replaced(tmp_path: Path, graded: dict[str, tuple]) -> None:
    results, images = graded["unedited"]
    summary = summarise(results)
    out = write_report(tmp_path / "report", summary, results, images)
    names = sorted(p.name for p in out.iterdir())
    assert "report.html" in names and "results.json" in names
    assert {f"grid_{t}.png" for t in TASK_OPS} <= set(names)
    data = json.loads((out / "results.json").read_text())
    assert len(data["samples"]) == 2 * len(TASK_OPS) and data["summary"]["overall"]["success"] == 0.0
    assert "overall 0.0%" in (out / "report.html").read_text()
    assert (out / "table.md").read_text() == markdown_table(summary) + "\n"
    with pytest.raises(FileExistsError):
        write_report(tmp_path / "report", summary, results, images)
    write_report(tmp_path / "report", summary, results, images, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_bench_command_refuses_bad_arguments(tmp_path: Path) -> None:
    from firered_bench.evaluate.bench import register_bench

    parser = argparse.ArgumentParser()
    run = register_bench(parser)
    with pytest.raises(ValueError, match="per-category"):
        run(parser.parse_args(["synthetic", "--per-category", "0", "--out", str(tmp_path / "r")]))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        run(parser.parse_args(["synthetic", "--out", str(tmp_path / "r")]))
    assert (tmp_path / "r" / "keep.txt").read_text() == "mine"
    for text in ("no markers here\n", f"{TABLE_START}\nbut no end marker\n"):
        (tmp_path / "doc.md").write_text(text)
        with pytest.raises(ValueError, match="doc.md: needs exactly one <!-- bench-table:start -->"):
            run(parser.parse_args(["synthetic", "--out", str(tmp_path / "new"), "--update-tables",
                                   str(tmp_path / "doc.md")]))
        assert not (tmp_path / "new").exists()  # refused before any benchmarking


def test_the_markdown_table_replaces_only_the_marked_block(tmp_path: Path, graded: dict[str, tuple]) -> None:
    table = markdown_table(summarise(graded["perfect"][0]))
    rows = table.splitlines()
    assert rows[0].startswith("| category | n | success") and len(rows) == 2 + len(TASK_OPS) + 1
    assert "| color | 2 | 100.0% |" in table and rows[-1].startswith("| **overall** | 26 | **100.0%** |")
    assert "100.0% of 24 edits with a source" in rows[-1]  # text-to-image samples have no source
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\nbefore\n{TABLE_START}\n| old | table |\n{TABLE_END}\nafter\n")
    update_marked_table(doc, table)
    assert doc.read_text() == f"# Title\nbefore\n{TABLE_START}\n{table}\n{TABLE_END}\nafter\n"
    update_marked_table(doc, "| new |")  # again: the markers stay, one block
    assert doc.read_text() == f"# Title\nbefore\n{TABLE_START}\n| new |\n{TABLE_END}\nafter\n"
    broken_docs = (f"{TABLE_START}\nno end\n", f"{TABLE_END}\n{TABLE_START}\n",
                   f"{TABLE_START}{TABLE_START}{TABLE_END}")
    for broken in broken_docs:
        doc.write_text(broken)
        with pytest.raises(ValueError, match="exactly one"):
            update_marked_table(doc, table)
        assert doc.read_text() == broken  # a document it cannot update is left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary files left


def test_the_summary_counts_the_checks_each_category_missed(graded: dict[str, tuple]) -> None:
    perfect = summarise(graded["perfect"][0])
    assert all(f["missed"] == {} and most_missed(f) == "-" for f in perfect["categories"].values())
    unedited = summarise(graded["unedited"][0])
    # an unedited source keeps everything outside the edit (passes) but never shows the asked colour / background
    assert unedited["categories"]["color"]["missed"] == {"object_color": 2}
    assert unedited["categories"]["remove"]["missed"] == {"vacated_is_background": 2}
    assert most_missed(unedited["categories"]["color"]) == "object_color (2/2)"
    assert sum(unedited["overall"]["missed"].values()) >= 2 * len(TASK_OPS)  # every failed sample missed >= 1 check
    table = markdown_table(unedited)
    assert table.splitlines()[0].endswith("| most often missed check |")
    assert [row for row in table.splitlines() if row.startswith("| color |")][0].endswith("| object_color (2/2) |")


def test_a_result_of_the_wrong_size_misses_the_size_check() -> None:
    from firered_bench.grade.checks import check
    from firered_bench.generate.generator import generate

    sample = next(iter(generate("heldout", 1)))
    verdict = check(list(sample.sources), sample.target.resize((32, 32)), sample.spec)
    assert not verdict.passed and verdict.missed == ("size",) and "expected 64x64" in verdict.failures[0]
