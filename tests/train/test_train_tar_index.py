"""The size index of tar shards: written once next to the shard (atomically), read instead of the images, rebuilt
when the shard changes; records equal the streamed ones and open their images from the shard lazily."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from firered_train.data import EditRecord, ImageRef, SkipLog
from firered_train.data.readers import iter_tar_samples, tar_index, write_tar_shards
from firered_train.data.records import read_records

from ..shard_index_checks import damaged_index_is_rebuilt, png, second_read_uses_the_index, unwritable_folder_reads_lazily


def _corpus(root: Path, n: int = 7) -> list[Path]:
    records = [EditRecord(id=f"s{i}", task=("add", "t2i")[i % 2], instruction=f"edit {i}",
                          instruction_cn="改" if i % 3 == 0 else "",
                          target=ImageRef.probe(png(16 + i, 12, i * 20), f"s{i}"),
                          sources=tuple(ImageRef.probe(png(8 + k, 8 + i, k * 50), f"s{i}") for k in range(i % 3)))
               for i in range(n)]
    shards = write_tar_shards(records, root, samples_per_shard=4)
    with tarfile.open(shards[-1], "a") as tar:  # a broken sample at the end of the last shard
        info = tarfile.TarInfo("zz.tgt.png")
        info.size = 7
        tar.addfile(info, io.BytesIO(b"garbage"))
    return shards


def _streamed(shards: list[Path]) -> list[EditRecord]:
    return [r for shard in shards for _, r in iter_tar_samples(shard, 0, SkipLog())]


def test_index_is_written_next_to_each_shard_and_records_match_the_stream(tmp_path: Path) -> None:
    shards = _corpus(tmp_path)
    skips = SkipLog()
    records = read_records("webdataset", str(tmp_path), skips=skips)
    assert [tar_index.index_path(s).is_file() for s in shards] == [True, True]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file
    streamed = _streamed(shards)
    assert [(r.id, r.task, r.instruction, r.instruction_cn, r.source_sizes, r.target_size) for r in records] == \
        [(r.id, r.task, r.instruction, r.instruction_cn, r.source_sizes, r.target_size) for r in streamed]
    assert skips.counts == {"undecodable_image": 1}
    for lazy, full in zip(records, streamed):
        # memory holds sizes and offsets only; the pixels come from the shard when opened
        assert all(ref.data is None and ref.length for ref in (lazy.target, *lazy.sources))
        (src, tgt), (src_full, tgt_full) = lazy.open_images(), full.open_images()
        assert tgt.tobytes() == tgt_full.tobytes() and [s.tobytes() for s in src] == [s.tobytes() for s in src_full]


def test_a_second_read_uses_the_index_and_counts_the_same_skips(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _corpus(tmp_path)
    assert second_read_uses_the_index("webdataset", tmp_path, tar_index, monkeypatch) == {"undecodable_image": 1}


def test_a_changed_shard_is_indexed_again(tmp_path: Path) -> None:
    shards = _corpus(tmp_path)
    read_records("webdataset", str(tmp_path))
    with tarfile.open(shards[0], "a") as tar:  # one more good sample
        for ext, data in (("tgt.png", png(20, 20, 1)), ("txt", b"added later")):
            info = tarfile.TarInfo(f"new.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records = read_records("webdataset", str(tmp_path))
    assert f"{shards[0].name}:new" in [r.id for r in records]
    index = json.loads(tar_index.index_path(shards[0]).read_text(encoding="utf-8"))
    assert index["shard"]["size"] == shards[0].stat().st_size and len(index["samples"]) == 5


def test_a_damaged_index_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shards = _corpus(tmp_path)
    assert damaged_index_is_rebuilt("webdataset", tmp_path, shards[0], caplog)["version"] == 1


def test_an_unwritable_folder_still_reads_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    shards = _corpus(tmp_path)
    assert len(unwritable_folder_reads_lazily("webdataset", tmp_path, shards[0], monkeypatch, caplog)) == 7


def test_compressed_shards_are_still_read_into_memory(tmp_path: Path) -> None:
    shard = _corpus(tmp_path)[0]
    gz = tmp_path / "gz" / "one.tar.gz"
    gz.parent.mkdir()
    with tarfile.open(shard) as src, tarfile.open(gz, "w:gz") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
    records = read_records("webdataset", str(gz.parent))
    assert len(records) == 4 and records[0].target.data is not None
    assert not tar_index.index_path(gz).exists()
