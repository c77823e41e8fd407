"""``firered bench-compare``: pairing two benchmark runs edit by edit, with real report folders of oracle 'models'."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from firered_bench.evaluate.bench import run_benchmark
from firered_bench.evaluate.summary import summarise
from firered_bench.evaluate.compare import (compare, format_comparison, load_runs, register_bench_compare,
                                                   sign_test)
from firered_bench.evaluate.report import write_report

TASKS = ("color", "remove", "t2i")


def _report(folder: Path, edit, seed: int = 0) -> Path:
    results, images = run_benchmark(edit, 2, seed=seed, tasks=TASKS)
    return write_report(folder, summarise(results), results, images)


def _perfect(sample, index):
    return sample.target


def _unedited(sample, index):
    return sample.sources[0] if sample.sources else Image.new("RGB", sample.target.size)


def _half(sample, index):
    """The target for even indices, the source for odd ones: a model that does every other edit."""
    return _perfect(sample, index) if index % 2 == 0 else _unedited(sample, index)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    return {"perfect": _report(root / "perfect", _perfect), "unedited": _report(root / "unedited", _unedited),
            "half": _report(root / "half", _half), "perfect_seed1": _report(root / "perfect1", _perfect, seed=1)}


def test_sign_test_matches_the_binomial_tail() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == 1.0
    assert sign_test(6, 0) == pytest.approx(2 / 64)
    assert sign_test(21, 2) == pytest.approx(2 * (1 + 23 + 253) / 2 ** 23)
    assert sign_test(2, 21) == sign_test(21, 2)
    assert sign_test(15, 9) == pytest.approx(2 * sum(math.comb(24, k) for k in range(10)) / 2 ** 24)


def test_pairs_every_edit_and_counts_who_passed_it(reports: dict[str, Path]) -> None:
    tallies = compare(load_runs([reports["unedited"]]), load_runs([reports["perfect"]]))
    assert list(tallies) == [*TASKS, "overall"]
    o = tallies["overall"]
    assert (o.n, o.base_passed, o.new_passed, o.only_base, o.only_new) == (6, 0, 6, 0, 6)
    assert (o.with_source, o.base_closer, o.new_closer) == (4, 0, 4)  # t2i has no source
    assert (o.closer_only_base, o.closer_only_new) == (0, 4)
    assert all(gain > 0 for gain in o.psnr_gain)
    text = format_comparison(tallies)
    assert text.splitlines()[-1] == ("paired: 6 vs 0 of 6 passed; 6 only new, 0 only base; "
                                     f"two-sided sign test p = {sign_test(6, 0):.3g}")
    assert text.splitlines()[-2] == ("closer than the source: 4 vs 0 of 4; 4 only new, 0 only base; "
                                     f"two-sided sign test p = {sign_test(4, 0):.3g}")
    # the other way round, and a model that passes exactly the even-numbered edits
    assert compare(load_runs([reports["perfect"]]), load_runs([reports["unedited"]]))["overall"].only_base == 6
    half = compare(load_runs([reports["perfect"]]), load_runs([reports["half"]]))["overall"]
    assert (half.new_passed, half.only_base, half.only_new) == (3, 3, 0)


def test_several_seeds_pool_and_mismatched_runs_are_refused(reports: dict[str, Path]) -> None:
    both = load_runs([reports["perfect"], reports["perfect_seed1"]])
    assert len(both) == 12  # the ids name the held-out seed, so the two draws never collide
    with pytest.raises(ValueError, match="graded different edits"):
        compare(both, load_runs([reports["unedited"]]))
    with pytest.raises(ValueError, match="also in another folder"):
        load_runs([reports["perfect"], reports["perfect"]])


def test_command_prints_the_table_and_names_bad_folders(reports: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    run = register_bench_compare(parser)
    assert run(parser.parse_args(["--base", str(reports["unedited"]), "--new", str(reports["half"])])) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["category", "n", "base", "new"]
    assert "paired: 3 vs 0 of 6 passed; 3 only new, 0 only base" in out
    with pytest.raises(FileNotFoundError, match="no results.json"):
        run(parser.parse_args(["--base", str(tmp_path), "--new", str(reports["half"])]))
    (tmp_path / "results.json").write_text(json.dumps({"samples": [{"id": "x", "task": "color"}]}))
    with pytest.raises(ValueError, match="not a benchmark results file .*missing .*'passed'"):
        load_runs([tmp_path])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a benchmark results file"):
        load_runs([tmp_path])


def test_firered_cli_mounts_the_command(reports: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from firered_core.cli import main as firered_main

    assert firered_main(["bench-compare", "--base", str(reports["perfect"]), "--new", str(reports["half"])]) == 0
    assert "3 only base" in capsys.readouterr().out
    assert firered_main(["bench-compare", "--base", str(tmp_path), "--new", str(reports["half"])]) == 2
    assert "no results.json" in capsys.readouterr().err
