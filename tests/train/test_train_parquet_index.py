"""The size index of parquet shards: written once next to the shard (atomically), read instead of the images,
rebuilt when the shard changes; records equal the streamed ones and read their images lazily, one image column of
one row group, when opened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from firered_train.data import BadSampleError, SkipLog
from firered_train.data.readers import iter_parquet_samples, parquet_index, shard_index
from firered_train.data.readers.parquet import ParquetCell
from firered_train.data.records import read_records

from ..shard_index_checks import damaged_index_is_rebuilt, png, second_read_uses_the_index, unwritable_folder_reads_lazily

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "task": ("add", "t2i")[i % 2], "instruction": f"edit {i}",
             "instruction_cn": "改" if i % 3 == 0 else None, "target_image": png(16 + i, 12, i * 20),
             "source_image": [png(8 + k, 8 + i, k * 50) for k in range(i % 3)]}
            for i in range(start, start + n)]


def _corpus(root: Path) -> list[Path]:
    """Two shards: list-of-binary sources in row groups of 3 with a broken row at the end, and Hugging Face
    ``datasets``-style image structs with one plain binary source."""
    root.mkdir(parents=True, exist_ok=True)
    first = _rows(7) + [{**_rows(1, 7)[0], "target_image": b"garbage"}]
    pq.write_table(pa.Table.from_pylist(first), root / "a.parquet", row_group_size=3)
    second = [{"id": f"h{i}", "instruction": f"hf {i}", "target_image": {"bytes": png(20, 10 + i, 3), "path": None},
               "source_image": png(6, 6 + i, 7)} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(second), root / "b.parquet", row_group_size=2)
    return [root / "a.parquet", root / "b.parquet"]


def _streamed(shards: list[Path]) -> list[Any]:
    return [r for shard in shards for _, r in iter_parquet_samples(shard, 0, SkipLog())]


def _fields(records: list[Any]) -> list[tuple]:
    return [(r.id, r.task, r.instruction, r.instruction_cn, r.source_sizes, r.target_size, r.target.name,
             tuple(s.name for s in r.sources)) for r in records]


def test_index_is_written_next_to_each_shard_and_records_match_the_stream(tmp_path: Path) -> None:
    shards = _corpus(tmp_path)
    skips = SkipLog()
    records = read_records("parquet", str(tmp_path), skips=skips)
    assert [shard_index.index_path(s).is_file() for s in shards] == [True, True]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
    streamed = _streamed(shards)
    assert len(records) == 10 and _fields(records) == _fields(streamed)
    assert skips.counts == {"undecodable_image": 1}
    for lazy, full in zip(records, streamed):
        # memory holds sizes and cell coordinates only; the pixels come from the shard when opened
        assert all(ref.data is None and isinstance(ref.locator, ParquetCell) for ref in (lazy.target, *lazy.sources))
        (src, tgt), (src_full, tgt_full) = lazy.open_images(), full.open_images()
        assert tgt.tobytes() == tgt_full.tobytes() and [s.tobytes() for s in src] == [s.tobytes() for s in src_full]
    index = json.loads(shard_index.index_path(shards[0]).read_text(encoding="utf-8"))
    assert [(e["row"], e["group"], e["pos"]) for e in index["samples"]][-2:] == [(5, 1, 2), (6, 2, 0)]


def test_an_image_read_touches_one_column_of_one_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = _corpus(tmp_path)
    record = next(r for r in read_records("parquet", str(tmp_path)) if r.id == "s5")  # row 5: group 1, position 2
    calls: list[dict[str, Any]] = []
    iter_batches = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return iter_batches(self, *args, **kwargs)

    def no_full_read(*_: Any, **__: Any) -> None:
        raise AssertionError("a whole row group was read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", no_full_read)
    sources, target = record.open_images()
    assert target.size == (21, 12) and [s.size for s in sources] == [(8, 13), (9, 13)]
    assert [(c["row_groups"], c["columns"], c["batch_size"]) for c in calls] == \
        [([1], ["source_image"], 3), ([1], ["source_image"], 3), ([1], ["target_image"], 3)]
    assert shards[0].name in record.target.name


def test_a_second_read_uses_the_index_and_counts_the_same_skips(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _corpus(tmp_path)
    assert second_read_uses_the_index("parquet", tmp_path, parquet_index, monkeypatch) == {"undecodable_image": 1}


def test_a_changed_shard_is_indexed_again(tmp_path: Path) -> None:
    shards = _corpus(tmp_path)
    read_records("parquet", str(tmp_path))
    pq.write_table(pa.Table.from_pylist(_rows(4, start=20)), shards[0], row_group_size=3)  # rewritten in place
    records = read_records("parquet", str(tmp_path))
    assert [r.id for r in records][:4] == ["s20", "s21", "s22", "s23"]
    assert records[3].target.open().size == (39, 12)
    index = json.loads(shard_index.index_path(shards[0]).read_text(encoding="utf-8"))
    assert index["shard"]["size"] == shards[0].stat().st_size and len(index["samples"]) == 4
    assert index["skips"] == {}


def test_a_damaged_index_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shards = _corpus(tmp_path)
    assert damaged_index_is_rebuilt("parquet", tmp_path, shards[1], caplog)["format"] == "firered-parquet-index"


def test_an_unwritable_folder_still_reads_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    shards = _corpus(tmp_path)
    assert len(unwritable_folder_reads_lazily("parquet", tmp_path, shards[0], monkeypatch, caplog)) == 10


def test_a_row_gone_since_indexing_is_a_bad_sample(tmp_path: Path) -> None:
    shards = _corpus(tmp_path)
    record = read_records("parquet", str(tmp_path))[6]
    pq.write_table(pa.Table.from_pylist(_rows(2)), shards[0])  # shorter now; the old record still points at row 6
    with pytest.raises(BadSampleError) as err:
        record.open_images()
    assert "undecodable_image" in str(err.value) and "a.parquet:6" in str(err.value)
