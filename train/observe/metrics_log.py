"""The run's metrics as a JSON-lines file: one object per logged step, appended whole.

::

    metrics = MetricsLog("runs/x/metrics.jsonl")
    metrics.rewind(resumed_step)                         # on resume: forget steps the checkpoint does not cover
    metrics.write(step, loss=0.12, lr=1e-5, **bins.scalars())
    records = read_metrics("runs/x/metrics.jsonl")       # -> list of dicts, e.g. for the loss curve

Each record is encoded first and handed to the OS in one ``write`` on a file opened with ``O_APPEND``, so a line
is never interleaved with another and a killed process leaves at most one torn line at the end. Opening the log
repairs that (cuts the torn tail), and ``read_metrics`` skips unreadable lines. After a resume, ``rewind(step)``
rewrites the file (temp file + ``os.replace``) without the records of steps the run will train again, so the
curve of a resumed run equals that of an uninterrupted one.

Values may be numbers, strings, bools, None, lists and dicts; tensors and numpy scalars are converted with
``item()``. Non-finite floats become null, keeping every line standard JSON (a NaN loss shows as a gap).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["MetricsLog", "read_metrics"]

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.generic)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"metrics: cannot log a value of type {type(value).__name__}")


def _repair_tail(path: Path) -> None:
    """Cut a last line that a killed process left without its newline."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        end = size
        while end > 0:  # find the last newline, scanning backwards
            start = max(0, end - chunk)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                break
            end = start
        else:
            f.truncate(0)
        log.warning("%s: removed a torn last line left by an interrupted run", path)


class MetricsLog:
    """Append-only JSONL metrics file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _repair_tail(self.path)
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def write(self, step: int, **values: Any) -> None:
        """Append ``{"step": step, "time": unix time, **values}`` as one line."""
        record = {"step": int(step), "time": round(time.time(), 3), **{k: _plain(v) for k, v in values.items()}}
        data = (json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
        fd = self._open()
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or similar; the torn line is repaired on next open
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")

    def rewind(self, step: int) -> int:
        """Drop records with a step above ``step`` (atomic rewrite); returns how many were dropped."""
        self.close()
        if not self.path.exists():
            return 0
        records = read_metrics(self.path)
        keep = [r for r in records if int(r.get("step", 0)) <= step]
        if len(keep) == len(records):
            return 0
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for r in keep:
                    f.write(json.dumps(r, allow_nan=False, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(records) - len(keep)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable record of a metrics file, in order (torn or foreign lines are skipped with a warning)."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", path, bad)
    return records
