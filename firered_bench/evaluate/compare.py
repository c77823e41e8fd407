"""``firered bench-compare``: two models graded on the same held-out edits, compared edit by edit.

Two benchmark runs of 260 edits can differ by a few points by chance alone, so an overall difference says
little by itself. This command pairs the verdicts of ``firered bench synthetic`` report folders by sample id
(the id names the held-out draw, so several seeds can be pooled) and prints, per category and overall, how many
edits each model passed, how many only the base or only the new model passed, the share closer to the target
than the source, and the mean change in PSNR to the target. The last two lines pair, over all edits, who got
closer to the target than the source and who passed; each ends with a two-sided exact sign test over the edits
the two models judged differently: the chance of a split at least this lopsided if either model were as likely
to win each of them.

::

    firered bench-compare --base outputs/a_seed0 outputs/a_seed1 --new outputs/b_seed0 outputs/b_seed1

Both sides must have graded exactly the same edits (same held-out seeds and ``--per-category``); otherwise the
command names the ids that only one side has and exits 2.

Public API: ``load_runs``, ``compare``, ``sign_test``, ``format_comparison``, ``register_bench_compare``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .summary import BenchSample
from ..grade.metrics import finite_db

__all__ = ["load_runs", "compare", "sign_test", "format_comparison", "register_bench_compare", "Tally"]


def load_runs(folders: Sequence[str | Path]) -> dict[str, BenchSample]:
    """The graded samples of one or more report folders (their ``results.json``), keyed by sample id."""
    samples: dict[str, BenchSample] = {}
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no results.json (a report folder of firered bench synthetic?)")
        try:
            rows = [BenchSample(**row) for row in json.loads(path.read_text(encoding="utf-8"))["samples"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a benchmark results file ({type(exc).__name__}: {exc})") from None
        for row in rows:
            if row.id in samples:
                raise ValueError(f"{path}: sample {row.id} is also in another folder; pass each run once")
            samples[row.id] = row
    if not samples:
        raise ValueError(f"no graded samples in {', '.join(map(str, folders))}")
    return samples


@dataclass
class Tally:
    """One category's (or the whole run's) paired counts."""

    n: int = 0
    base_passed: int = 0
    new_passed: int = 0
    only_base: int = 0
    only_new: int = 0
    with_source: int = 0
    base_closer: int = 0
    new_closer: int = 0
    closer_only_base: int = 0  # edits with a source that only the base / only the new model got closer than it
    closer_only_new: int = 0
    psnr_gain: list[float] = field(default_factory=list)  # per pair: new minus base PSNR to the target, dB

    def add(self, base: BenchSample, new: BenchSample) -> None:
        self.n += 1
        self.base_passed += base.passed
        self.new_passed += new.passed
        self.only_base += base.passed and not new.passed
        self.only_new += new.passed and not base.passed
        if base.closer_than_source is not None:
            self.with_source += 1
            base_closer, new_closer = base.closer_than_source, bool(new.closer_than_source)
            self.base_closer += base_closer
            self.new_closer += new_closer
            self.closer_only_base += base_closer and not new_closer
            self.closer_only_new += new_closer and not base_closer
        self.psnr_gain.append(finite_db(new.psnr_to_target) - finite_db(base.psnr_to_target))


def compare(base: dict[str, BenchSample], new: dict[str, BenchSample]) -> dict[str, Tally]:
    """Per-category tallies (in the base run's order) plus ``"overall"``; both runs must hold the same ids."""
    only_base, only_new = sorted(set(base) - set(new)), sorted(set(new) - set(base))
    if only_base or only_new:
        raise ValueError("the runs graded different edits (use the same --seed and --per-category): "
                         f"{len(only_base)} only in --base {only_base[:3]}, {len(only_new)} only in --new "
                         f"{only_new[:3]}")
    tallies: dict[str, Tally] = {}
    overall = Tally()
    for sample_id, row in base.items():
        if new[sample_id].task != row.task:
            raise ValueError(f"sample {sample_id} is a {row.task} edit in --base but {new[sample_id].task} "
                             "in --new: not the same held-out split")
        tallies.setdefault(row.task, Tally()).add(row, new[sample_id])
        overall.add(row, new[sample_id])
    tallies["overall"] = overall
    return tallies


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | each discordant edit a fair coin)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def format_comparison(tallies: dict[str, Tally]) -> str:
    head = (f"{'category':<12} {'n':>4} {'base':>7} {'new':>7} {'only base':>10} {'only new':>9} "
            f"{'closer base':>12} {'closer new':>11} {'dPSNR':>7}")
    lines = [head]
    for name, t in tallies.items():
        gain = sum(t.psnr_gain) / t.n if t.n else 0.0
        lines.append(f"{name:<12} {t.n:>4} {_share(t.base_passed, t.n):>7} {_share(t.new_passed, t.n):>7} "
                     f"{t.only_base:>10} {t.only_new:>9} {_share(t.base_closer, t.with_source):>12} "
                     f"{_share(t.new_closer, t.with_source):>11} {gain:>+7.2f}")
    o = tallies["overall"]
    lines.append(f"closer than the source: {o.new_closer} vs {o.base_closer} of {o.with_source}; "
                 f"{o.closer_only_new} only new, {o.closer_only_base} only base; two-sided sign test "
                 f"p = {sign_test(o.closer_only_new, o.closer_only_base):.3g}")
    lines.append(f"paired: {o.new_passed} vs {o.base_passed} of {o.n} passed; {o.only_new} only new, "
                 f"{o.only_base} only base; two-sided sign test p = {sign_test(o.only_new, o.only_base):.3g}")
    return "\n".join(lines)


def register_bench_compare(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = ("Compare two models edit by edit on the same held-out benchmark samples "
                          "(report folders of firered bench synthetic).")
    parser.add_argument("--base", nargs="+", required=True, metavar="REPORT", help="the base model's report folders")
    parser.add_argument("--new", nargs="+", required=True, metavar="REPORT", help="the new model's report folders")
    return run_bench_compare


def run_bench_compare(args: argparse.Namespace) -> int:
    print(format_comparison(compare(load_runs(args.base), load_runs(args.new))), flush=True)
    return 0
