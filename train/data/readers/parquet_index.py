"""A size index of each parquet shard, so a parquet corpus is listed without holding its images in memory.

The same treatment as tar shards (``tar_index``): one pass over a shard, a row group at a time, probes every row's
image headers and writes ``<shard>.index.json`` next to it (``shard_index``: atomic, rebuilt when the shard
changes, skips counted on every read), with one entry per good row::

    {"row": 42, "group": 0, "pos": 42, "id": "...", "task": "...", "texts": {"instruction": "..."},
     "target": [width, height], "sources": [[width, height], ...]}

``parquet_records(shard, skips)`` returns the shard's records; their ``ImageRef`` values know their size and hold
a ``parquet.ParquetCell`` (row group, position, column, list item) that reads only that image column of that row
group, up to the row, when a batch opens the image. Records, ids, image names and skips are the ones
``iter_parquet_samples`` gives, whether the index was just written or read.

Public API: ``parquet_records``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..record import BadSampleError, EditRecord, ImageRef
from ..skips import SkipLog
from .parquet import ParquetCell, parquet_rows, record_from_row
from .shard_index import indexed_records

__all__ = ["parquet_records"]

_KIND = ("firered-parquet-index", 1)
_TEXT_FIELDS = ("instruction", "instruction_cn", "inverse_instruction", "inverse_instruction_cn")


def _entry(record: EditRecord, group: int, pos: int, row: int) -> dict[str, Any]:
    return {"row": row, "group": group, "pos": pos, "id": record.id, "task": record.task,
            "texts": {f: getattr(record, f) for f in _TEXT_FIELDS if getattr(record, f)},
            "target": [record.target.width, record.target.height],
            "sources": [[ref.width, ref.height] for ref in record.sources]}


def _scan(shard: Path, skips: SkipLog) -> dict[str, Any]:
    """One pass over a shard: its entries and skip counts; skips go into ``skips`` too."""
    before = dict(skips.counts)
    entries = []
    try:
        for group, pos, row, values in parquet_rows(shard, 0):
            try:
                entries.append(_entry(record_from_row(values, shard.name, row), group, pos, row))
            except BadSampleError as exc:
                skips.add(exc)
    except BadSampleError as exc:  # an unreadable shard counts once; the rows before the damage stay
        skips.add(exc)
    counts = {k: n - before.get(k, 0) for k, n in sorted(skips.counts.items()) if n != before.get(k, 0)}
    return {"skips": counts, "samples": entries}


def _record(shard: Path, entry: dict[str, Any]) -> EditRecord:
    row, group, pos = int(entry["row"]), int(entry["group"]), int(entry["pos"])

    def ref(size: list[int], column: str, item: int, name: str) -> ImageRef:
        width, height = size
        return ImageRef(int(width), int(height), path=shard, name=f"{shard.name}:{row}.{name}",
                        locator=ParquetCell(group, pos, column, item))

    target = ref(entry["target"], "target_image", 0, "target_image")
    sources = tuple(ref(size, "source_image", k, f"source{k}") for k, size in enumerate(entry["sources"]))
    return EditRecord(id=entry["id"], task=entry["task"], target=target, sources=sources, **entry["texts"])


def parquet_records(shard: Path, skips: SkipLog) -> list[EditRecord]:
    """The records of a parquet shard, images read lazily; indexes the shard first if needed."""
    return indexed_records(shard, _KIND, _scan, _record, skips)
