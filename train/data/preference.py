"""Preference pairs for DPO: the same sources and instruction, a preferred (winner) and a rejected (loser) result.

FireRed's pairs take winners from expert and aesthetic sources and losers from the base model's own outputs,
filtered by a VLM judge; the optional scores keep what that judge said (for filtering and for logs, not for the
loss). The JSONL manifest, one object per line (format for users: ``docs/DATA_FORMAT.md``)::

    {"sources": ["img/001.png"], "instruction": "Change the sky to sunset.",
     "winner": "img/001_good.png", "loser": "img/001_bad.png",
     "winner_score": 8.5, "loser_score": 3.0, "task": "adjust", "id": "001"}

- ``sources``: a list of paths (in order; missing, null or ``[]`` = text-to-image);
- ``instruction``: non-empty text; ``winner`` / ``loser``: paths of two different files;
- ``winner_score`` / ``loser_score``: optional finite numbers; ``task`` (default "default") and ``id`` (default
  ``<manifest name>:<line>``) as in the edit manifests.

Paths are relative to the manifest's folder (absolute ones are kept, URLs refused). A bad line is skipped and
counted in the ``SkipLog`` like a bad edit sample; its message names the line and the field.

Public API: ``PreferenceRecord``, ``preference_from_row``, ``read_preferences``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

# _image: path -> ImageRef, relative to the manifest, URLs refused, size from the header
from .readers.jsonl import _image, read_manifest_lines
from .record import BadSampleError, ImageRef, SkipReason
from .skips import SkipLog

log = logging.getLogger(__name__)

__all__ = ["PreferenceRecord", "preference_from_row", "read_preferences"]


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair: sources and instruction shared, the winner preferred over the loser."""

    id: str
    instruction: str
    winner: ImageRef
    loser: ImageRef
    sources: tuple[ImageRef, ...] = ()
    winner_score: float | None = None  # the judge's score, kept for filtering and logs
    loser_score: float | None = None
    task: str = "default"


def _malformed(sid: str, detail: str) -> BadSampleError:
    return BadSampleError(SkipReason.MALFORMED, sid, detail)


def _path(row: Mapping[str, Any], key: str, sid: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _malformed(sid, f"{key} must be a path, got {value!r}")
    return value


def _sources(row: Mapping[str, Any], sid: str) -> list[str]:
    value = row.get("sources")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _malformed(sid, f"sources must be a list of paths, got {value!r}")
    return value


def _score(row: Mapping[str, Any], key: str, sid: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _malformed(sid, f"{key} must be a finite number, got {value!r}")
    return float(value)


def _instruction(row: Mapping[str, Any], sid: str) -> str:
    value = row.get("instruction")
    if not isinstance(value, str):
        raise _malformed(sid, f"instruction must be a string, got {value!r}")
    if not value.strip():
        raise BadSampleError(SkipReason.EMPTY_TEXT, sid, "instruction is empty")
    return value.strip()


def preference_from_row(row: Any, base: Path, default_id: str) -> PreferenceRecord:
    """The validated pair of one parsed manifest line; raises ``BadSampleError`` naming the field."""
    if not isinstance(row, dict):
        raise _malformed(default_id, "a manifest line must be a JSON object")
    sid = str(row.get("id") or default_id)
    task = row.get("task") or "default"
    if not isinstance(task, str):
        raise _malformed(sid, f"task must be a string, got {task!r}")
    instruction = _instruction(row, sid)
    winner_rel, loser_rel = _path(row, "winner", sid), _path(row, "loser", sid)
    if (base / winner_rel).resolve() == (base / loser_rel).resolve():
        raise _malformed(sid, f"winner and loser are the same file: {winner_rel}")
    scores = _score(row, "winner_score", sid), _score(row, "loser_score", sid)
    sources = tuple(_image(base, rel, None, sid) for rel in _sources(row, sid))
    return PreferenceRecord(id=sid, instruction=instruction, winner=_image(base, winner_rel, None, sid),
                            loser=_image(base, loser_rel, None, sid), sources=sources, winner_score=scores[0],
                            loser_score=scores[1], task=task)


def _located(error: BadSampleError, where: str) -> BadSampleError:
    """The error with the manifest line in its text when the sample's own id does not already say it."""
    if error.sample_id == where:
        return error
    return BadSampleError(error.reason, error.sample_id, f"{where}: {error.detail}")


def read_preferences(manifests: str | Path | Iterable[str | Path],
                     skips: SkipLog | None = None) -> list[PreferenceRecord]:
    """All good pairs of one or more manifests, in file then line order; bad lines are counted in ``skips``."""
    skips = skips if skips is not None else SkipLog()
    skipped_before = skips.total

    def parse(row: Any, base: Path, where: str) -> PreferenceRecord:
        try:
            return preference_from_row(row, base, where)
        except BadSampleError as exc:
            raise _located(exc, where) from exc

    records, count = read_manifest_lines(manifests, parse, skips, what="preference manifest")
    log.info("read %d preference pairs from %d manifest(s) (%d skipped)", len(records), count,
             skips.total - skipped_before)
    return records
