"""The benchmark's figures: one graded edit (``BenchSample``), the per-category and overall summary of a run,
and the plain-text table ``firered bench`` prints.

Public API: ``BenchSample``, ``summarise``, ``most_missed``, ``share``, ``format_table``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..grade.metrics import finite_db

__all__ = ["BenchSample", "summarise", "most_missed", "share", "format_table"]


@dataclass
class BenchSample:
    id: str
    task: str
    op: str
    instruction: str
    passed: bool
    failures: list[str]
    psnr_to_target: float
    source_psnr_to_target: float | None  # Picture 1 vs target; None for text-to-image
    metrics: dict[str, float] = field(default_factory=dict)
    ceiling_passed: bool | None = None  # the exact target through the model's VAE, graded by the same check
    missed: list[str] = field(default_factory=list)  # names of the failed criteria

    @property
    def closer_than_source(self) -> bool | None:
        if self.source_psnr_to_target is None:
            return None
        return finite_db(self.psnr_to_target) > finite_db(self.source_psnr_to_target)


def summarise(results: Sequence[BenchSample]) -> dict[str, Any]:
    """Per-category and overall figures (success, mean PSNR to target, closer-than-source share, and how often
    each check was missed: ``missed``, criterion -> count, most frequent first)."""
    def figures(rows: Sequence[BenchSample]) -> dict[str, Any]:
        closer = [r.closer_than_source for r in rows if r.closer_than_source is not None]
        best = [r.ceiling_passed for r in rows if r.ceiling_passed is not None]
        missed = Counter(name for r in rows for name in r.missed)
        return {"n": len(rows), "success": sum(r.passed for r in rows) / len(rows) if rows else math.nan,
                "missed": dict(sorted(missed.items(), key=lambda kv: (-kv[1], kv[0]))),
                "ceiling": sum(best) / len(best) if best else None,
                "psnr_to_target": sum(finite_db(r.psnr_to_target) for r in rows) / len(rows) if rows else math.nan,
                "closer_than_source": sum(closer) / len(closer) if closer else None, "n_with_source": len(closer)}

    by_task: dict[str, list[BenchSample]] = {}
    for r in results:
        by_task.setdefault(r.task, []).append(r)
    return {"categories": {task: figures(rows) for task, rows in by_task.items()}, "overall": figures(results)}


def most_missed(figures: dict[str, Any]) -> str:
    """The check a category's results missed most often, as "name (count/n)"; "-" when none was missed."""
    missed = figures.get("missed") or {}
    if not missed:
        return "-"
    name, count = next(iter(missed.items()))
    return f"{name} ({count}/{figures['n']})"


def share(value: float | None) -> str:
    """A fraction as a whole percentage, "-" when there is none (no sample with a source, no ceiling)."""
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'category':<12} {'n':>4} {'success':>8} {'PSNR->tgt':>10} {'closer':>7} {'ceiling':>8}"]
    for task, f in summary["categories"].items():
        lines.append(f"{task:<12} {f['n']:>4} {100 * f['success']:>7.1f}% {f['psnr_to_target']:>9.2f}  "
                     f"{share(f['closer_than_source']):>6} {share(f.get('ceiling')):>8}")
    o = summary["overall"]
    if o.get("ceiling") is not None:
        lines.append(f"ceiling (exact targets through the VAE, same checks): {100 * o['ceiling']:.1f}%")
    lines.append(f"closer to target than source: {100 * (o['closer_than_source'] or 0):.1f}% "
                 f"of {o['n_with_source']} edits with a source")
    lines.append(f"overall {100 * o['success']:.1f}%")
    return "\n".join(lines)
