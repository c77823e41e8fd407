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
install. ``record_from_row`` needs no pyarrow and turns one row (a dict) into a record. ``ParquetCell`` reads one
image back out of a shard (``parquet_index`` lists shards with it instead of holding their images).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
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


def parquet_rows(path: Path, start: int) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """(row group, position in it, row number, row) of every row from ``start`` on, one row group in memory at a
    time; an unreadable shard raises ``BadSampleError`` (after the rows before the damage)."""
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
                yield group, offset, first + offset, rows[offset]
            first += rows_in_group
    except FileNotFoundError as exc:
        raise BadSampleError(SkipReason.MISSING_FILE, path.name, f"no such shard: {path}") from exc
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise BadSampleError(SkipReason.MALFORMED, path.name, f"unreadable shard: {exc}") from exc


def iter_parquet_samples(path: Path, start: int, skips: SkipLog) -> Iterator[tuple[int, EditRecord]]:
    """A ``ShardReader`` for parquet shards (see ``stream.py``)."""
    for _, _, index, row in parquet_rows(path, start):
        try:
            yield index, record_from_row(row, path.name, index)
        except BadSampleError as exc:
            skips.add(exc)


@dataclass(frozen=True)
class ParquetCell:
    """An image in a parquet shard: row ``row`` of row group ``group``, column ``column`` (item ``item`` of a
    list cell; a plain cell is item 0). A ``record.ByteLocator``.

    Parquet has no byte offsets per row: reading decodes the column's values of the row group up to the row (never
    other columns or row groups), so keep row groups small (``row_group_size`` of a few hundred or less).
    """

    group: int
    row: int
    column: str
    item: int = 0

    def read(self, path: Path, sample_id: str, name: str) -> bytes:
        pq = _pyarrow_parquet()
        try:
            with pq.ParquetFile(path) as shard:
                value = self._value(shard)
        except (OSError, ValueError, KeyError, IndexError) as exc:  # a shard rewritten since it was indexed
            raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id, f"{name}: {exc}") from exc
        if isinstance(value, list):
            if self.item >= len(value):
                raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id,
                                     f"{name}: the cell holds {len(value)} images, not {self.item + 1}")
            value = value[self.item]
        return _image_bytes(value, self.column, sample_id)

    def _value(self, shard: Any) -> Any:
        seen = 0
        for batch in shard.iter_batches(batch_size=self.row + 1, row_groups=[self.group], columns=[self.column],
                                        use_threads=False):  # the first batch normally ends at the row
            if self.row < seen + batch.num_rows:
                return batch.column(0)[self.row - seen].as_py()
            seen += batch.num_rows
        raise IndexError(f"row group {self.group} has only {seen} rows")
