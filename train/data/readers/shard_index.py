"""The index file next to a shard: written once, atomically, read instead of the shard, rebuilt when it changes.

A shard format with random access (plain ``.tar``: ``tar_index``; ``.parquet``: ``parquet_index``) lists its
samples from one pass that records each sample's id, task, instructions, image sizes and where its images are.
That pass is kept as ``<shard>.index.json``::

    {"format": "firered-tar-index", "version": 1, "shard": {"size": 123456, "mtime_ns": ...},
     "skips": {"undecodable_image": 1},            # bad samples found by the pass, counted again on every read
     "samples": [...]}                             # one entry per good sample, in the format's own layout

``indexed_records`` reads the index (making it first when it is missing, unreadable, of another format or
version, or stale: the shard's size or modification time changed) and turns its entries into records. Skips are
counted the same whether the index was just written or read. The index is written to a temporary file and renamed
(processes indexing the same shard at once all write the same content); a read-only corpus folder is indexed in
memory on every read, with a warning.

Public API: ``INDEX_SUFFIX``, ``index_path``, ``indexed_records``, ``write_index``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..record import EditRecord
from ..skips import SkipLog

log = logging.getLogger(__name__)

__all__ = ["INDEX_SUFFIX", "index_path", "indexed_records", "write_index"]

INDEX_SUFFIX = ".index.json"

# (shard, skip log) -> {"skips": {reason: count}, "samples": [entry, ...]}; counts the skips in the log too
Scan = Callable[[Path, SkipLog], dict[str, Any]]
# (shard, entry) -> the record of one index entry; raises KeyError / TypeError / ValueError on a damaged entry
ToRecord = Callable[[Path, dict[str, Any]], EditRecord]


def index_path(shard: Path) -> Path:
    """Where the index of ``shard`` lives: ``<shard>.index.json`` next to it."""
    return shard.with_name(shard.name + INDEX_SUFFIX)


def _stamp(shard: Path) -> dict[str, int]:
    stat = shard.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_index(path: Path, index: dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index, f, ensure_ascii=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path, shard: Path, kind: tuple[str, int]) -> dict[str, Any] | None:
    """The index at ``path`` if it is readable, of format ``kind`` and describes ``shard`` as it is now."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("index %s is unreadable (%s); indexing %s again", path, exc, shard.name)
        return None
    if not isinstance(index, dict) or (index.get("format"), index.get("version")) != kind:
        log.warning("index %s has another format; indexing %s again", path, shard.name)
        return None
    if index.get("shard") != _stamp(shard):
        log.info("shard %s changed since it was indexed; indexing it again", shard.name)
        return None
    return index


def _records(shard: Path, index: dict[str, Any], to_record: ToRecord) -> list[EditRecord] | None:
    try:
        return [to_record(shard, entry) for entry in index["samples"]]
    except (KeyError, TypeError, ValueError) as exc:  # edited or damaged by hand
        log.warning("index of %s does not parse (%s); indexing it again", shard.name, exc)
        return None


def indexed_records(shard: Path, kind: tuple[str, int], scan: Scan, to_record: ToRecord,
                    skips: SkipLog) -> list[EditRecord]:
    """The records of ``shard`` from its index of ``kind`` (format name, version); indexes it first if needed."""
    path = index_path(shard)
    index = _read(path, shard, kind)
    records = None if index is None else _records(shard, index, to_record)
    if index is not None and records is not None:
        if index["skips"]:
            skips.merge(index["skips"])
            log.info("%s: %d bad samples skipped when it was indexed (%s)", shard.name,
                     sum(index["skips"].values()), index["skips"])
        return records
    stamp = _stamp(shard)  # before the pass: a shard that changes during it is indexed again next time
    index = {"format": kind[0], "version": kind[1], "shard": stamp, **scan(shard, skips)}
    try:
        write_index(path, index)
    except OSError as exc:
        log.warning("cannot write the index of %s (%s): it is rebuilt on every read", shard.name, exc)
    return [to_record(shard, entry) for entry in index["samples"]]
