"""Choosing a preference pair from K scored edits, and writing the pairs as a self-contained manifest.

Two ways to pair (``PairConfig.mode``):

- ``best-worst``: the best- and the worst-scoring of the K edits, when their rewards differ by at least
  ``min_gap`` (edits that score alike teach nothing and mostly carry the reward's noise);
- ``target-vs-failed``: the dataset's own target against the model's worst edit, when that edit failed
  (reward below ``fail_below``); instructions the model already gets right give no pair.

The output folder holds ``prefs.jsonl`` and every picture a line names (sources copied as PNG, so the folder is
complete on its own). It is written to a temporary folder beside the destination and moved into place at the end;
an existing folder is replaced only when asked.

Public API: ``PairConfig``, ``PAIR_MODES``, ``pick_pair``, ``PreferenceWriter``.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from firered_core.config import ConfigError

__all__ = ["PAIR_MODES", "PairConfig", "PreferenceWriter", "pick_pair"]

PAIR_MODES = ("best-worst", "target-vs-failed")
TARGET = -1  # pick_pair's index for the dataset's target


@dataclass(frozen=True)
class PairConfig:
    mode: str = "best-worst"
    k: int = 4  # edits sampled per instruction (the report does not say how many; 4 keeps CPU runs short)
    min_gap: float = 0.1  # best-worst: smallest reward difference worth a pair
    fail_below: float = 1.0  # target-vs-failed: an edit below this reward counts as failed

    def __post_init__(self) -> None:
        if self.mode not in PAIR_MODES:
            raise ConfigError(f"mode: must be one of {', '.join(PAIR_MODES)}, got {self.mode!r}")
        if self.k < 1 or (self.mode == "best-worst" and self.k < 2):
            raise ConfigError(f"k: must be >= 2 for best-worst and >= 1 for target-vs-failed, got {self.k}")
        if not (math.isfinite(self.min_gap) and self.min_gap >= 0):
            raise ConfigError(f"min_gap: must be a finite number >= 0, got {self.min_gap!r}")
        if not math.isfinite(self.fail_below):
            raise ConfigError(f"fail_below: must be a finite number, got {self.fail_below!r}")


def pick_pair(scores: Sequence[float], config: PairConfig) -> tuple[int, int] | None:
    """(winner, loser) indices into ``scores`` (``TARGET`` = -1 for the dataset's target), or None: no pair.
    Ties go to the earlier edit, so a run is reproducible; a NaN score is never picked."""
    ranked = sorted((s, i) for i, s in enumerate(scores) if not math.isnan(s))
    if not ranked:
        return None
    worst, loser = min(ranked, key=lambda si: (si[0], si[1]))
    if config.mode == "target-vs-failed":
        return (TARGET, loser) if worst < config.fail_below else None
    best = max(ranked, key=lambda si: (si[0], -si[1]))
    return (best[1], loser) if best[0] - worst >= config.min_gap else None


class PreferenceWriter:
    """Collects pairs into a new folder and moves it into place on ``close``."""

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} exists; pass --overwrite to replace it")
        self.tmp = self.out.parent / f".{self.out.name}.{uuid.uuid4().hex[:8]}.tmp"
        (self.tmp / "images").mkdir(parents=True)
        self.lines: list[str] = []

    def _save(self, image: Image.Image, name: str) -> str:
        rel = f"images/{name}.png"
        image.convert("RGB").save(self.tmp / rel)
        return rel

    def add(self, sid: str, task: str, instruction: str, sources: Sequence[Image.Image], winner: Image.Image,
            loser: Image.Image, winner_score: float | None, loser_score: float | None) -> None:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in sid)[:80] or "pair"
        row: dict[str, Any] = {
            "id": sid, "task": task, "instruction": instruction,
            "sources": [self._save(img, f"{safe}_source{i}") for i, img in enumerate(sources)],
            "winner": self._save(winner, f"{safe}_winner"), "loser": self._save(loser, f"{safe}_loser")}
        for key, value in (("winner_score", winner_score), ("loser_score", loser_score)):
            if value is not None:
                row[key] = float(value)
        self.lines.append(json.dumps(row, ensure_ascii=False))

    def close(self) -> Path:
        """Write the manifest and move the folder into place; returns the manifest's path."""
        (self.tmp / "prefs.jsonl").write_text("".join(line + "\n" for line in self.lines), encoding="utf-8")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return self.out / "prefs.jsonl"

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
