"""Checks shared by the two shard formats with a size index (tests/train/test_train_tar_index.py, webdataset tar;
tests/train/test_train_parquet_index.py, parquet): each test file builds its own corpus and calls these with its reader
name and index module."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from firered_train.data import SkipLog
from firered_train.data.readers import shard_index
from firered_train.data.records import read_records

INDEX_LOGGER = "firered_train.data.readers.shard_index"


def png(width: int, height: int, value: int) -> bytes:
    """A small PNG of one colour, by its bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (value, 255 - value, 9)).save(buf, format="PNG")
    return buf.getvalue()


def second_read_uses_the_index(reader: str, root: Path, index_module: ModuleType,
                               monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Read ``root`` twice, the second time with shard scanning forbidden; same records, same skip counts.
    Returns the skip counts."""
    first_skips, second_skips = SkipLog(), SkipLog()
    first = read_records(reader, str(root), skips=first_skips)

    def no_scan(*_: object) -> None:
        raise AssertionError("the shard was read again")

    monkeypatch.setattr(index_module, "_scan", no_scan)
    second = read_records(reader, str(root), skips=second_skips)
    assert second == first and second_skips.counts == first_skips.counts
    return second_skips.counts


def damaged_index_is_rebuilt(reader: str, root: Path, shard: Path, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Truncate ``shard``'s index: the next read warns, gives the same records and rewrites it. Returns the new
    index."""
    expected = read_records(reader, str(root))
    path = shard_index.index_path(shard)
    path.write_text(path.read_text(encoding="utf-8")[:30], encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger=INDEX_LOGGER):
        assert read_records(reader, str(root)) == expected
    assert "unreadable" in caplog.text
    return json.loads(path.read_text(encoding="utf-8"))


def unwritable_folder_reads_lazily(reader: str, root: Path, shard: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> list[Any]:
    """With index writes refused, the read still works, lazily, warns, and leaves no index. Returns the records."""
    def refuse(*_: object) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(shard_index, "write_index", refuse)
    with caplog.at_level(logging.WARNING, logger=INDEX_LOGGER):
        records = read_records(reader, str(root))
    assert records[0].target.data is None
    assert "cannot write the index" in caplog.text and not shard_index.index_path(shard).exists()
    return records
