"""Parquet shards: one row per sample, read as a stream (needs the optional ``pyarrow``).

Columns (FireRed's field names; images are stored as encoded bytes, PNG/JPEG/WebP)::

    target_image            binary, or a struct {"bytes": binary, ...} as Hugging Face ``datasets`` writes images
    source_image            null, binary, or a list of those (in order; empty = text-to-image)
    instruction, instruction_cn, inverse_instruction, inverse_instruction_cn    string (null = absent)
    task, id                string (optional; id defaults to ``<shard name>:<row number>``)

A shard is read one row group at a time; resuming at row ``n`` skips whole row groups by their metadata and
decodes nothing before ``n``. Keep row groups modest (a few hundred samples) so a worker's memory stays small.
Bad rows are skipped and counted like every other format's bad samples.

``pyarrow`` is imported only when a parquet shard is opened; without it the error says which package to
install. ``record_from_row`` needs no pyarrow and turns one row (a dict) into a record.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Mapping

from ..record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..skips import SkipLog

_TEXT_FIELDS = ("instruction", "instruction_cn", "inverse_instruction", "inverse_instruction_cn")
INSTALL_HINT = ("reading parquet shards needs pyarrow, an optional dependency: "
                "pip install 'comfyui-firered[parquet]' (or pip install pyarrow)")


def _pyarrow_parquet() -> ModuleType:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def _image_bytes(value: Any, column: str, sid: str) -> bytes:
    if isinstance(value, Mapping):  # datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise BadSampleError(SkipReason.MISSING_FILE, sid, f"{column} holds no image bytes")
    return bytes(value)


def record_from_row(row: Mapping[str, Any], shard: str, index: int) -> EditRecord:
    """Build and validate the record of one parquet row; raises ``BadSampleError``."""
    sid = str(row.get("id") or f"{shard}:{index}")
    target = ImageRef.probe(_image_bytes(row.get("target_image"), "target_image", sid), sid,
                            name=f"{shard}:{index}.target_image")
    raw_sources = row.get("source_image")
    if raw_sources is None:
        raw_sources = []
    elif not isinstance(raw_sources, list):
        raw_sources = [raw_sources]
    sources = tuple(ImageRef.probe(_image_bytes(v, "source_image", sid), sid, name=f"{shard}:{index}.source{k}")
                    for k, v in enumerate(raw_sources))
    texts = {key: row.get(key) or "" for key in _TEXT_FIELDS}
    if not all(isinstance(v, str) for v in texts.values()):
        raise BadSampleError(SkipReason.MALFORMED, sid, "instruction columns must be strings")
    extra = {"task": str(row["task"])} if row.get("task") else {}
    return EditRecord(id=sid, target=target, sources=sources, **{k: v.strip() for k, v in texts.items()},
                      **extra).validate()


def iter_parquet_samples(path: Path, start: int, skips: SkipLog) -> Iterator[tuple[int, EditRecord]]:
    """A ``ShardReader`` for parquet shards (see ``stream.py``)."""
    pq = _pyarrow_parquet()
    try:
        shard = pq.ParquetFile(path)
        first = 0
        for group in range(shard.num_row_groups):
            rows_in_group = shard.metadata.row_group(group).num_rows
            if first + rows_in_group <= start:  # entirely before the resume point: not even read
                first += rows_in_group
                continue
            rows = shard.read_row_group(group).to_pylist()
            for offset in range(max(0, start - first), len(rows)):
                try:
                    yield first + offset, record_from_row(rows[offset], path.name, first + offset)
                except BadSampleError as exc:
                    skips.add(exc)
            first += rows_in_group
    except FileNotFoundError as exc:
        raise BadSampleError(SkipReason.MISSING_FILE, path.name, f"no such shard: {path}") from exc
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise BadSampleError(SkipReason.MALFORMED, path.name, f"unreadable shard: {exc}") from exc
