"""Records and readers: hand-made folders, JSONL manifests, tar/parquet shards streamed across ranks and workers.

Every data set is generated here in tmp_path. Broken samples must be skipped, counted by reason and named by id;
streams must split shards across (rank, worker) without overlap or gaps and resume at the exact next sample.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import pytest
from PIL import Image
from torch.utils.data import DataLoader


from firered_train.data import BadSampleError, EditRecord, ImageRef, SkipLog, SkipReason  # noqa: E402
from firered_train.data.readers import (  # noqa: E402
    ShardStream, StreamConfig, StreamEnd, StreamItem, iter_parquet_samples, iter_tar_samples, merge_stream_states,
    read_folder, read_jsonl, write_tar_shards,
)
from firered_train.data.readers import parquet as parquet_reader  # noqa: E402
from firered_train.data.readers import stream as stream_module  # noqa: E402


# ---------------------------------------------------------------- helpers
def png_bytes(width: int, height: int, value: int = 0, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (value, 255 - value, 7)).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def ref(width: int, height: int, value: int = 0) -> ImageRef:
    return ImageRef.probe(png_bytes(width, height, value), "test")


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_corpus(out: Path, n_samples: int, per_shard: int) -> tuple[list[Path], list[str]]:
    """Shards of good samples with 0..2 sources; returns (shards, ids in write order)."""
    records = [EditRecord(id=f"s{i:03d}", target=ref(32 + i % 5, 32, i % 250),
                          sources=tuple(ref(16 + k, 16, k) for k in range(i % 3)), instruction=f"edit number {i}",
                          task=("add", "t2i")[i % 2])
               for i in range(n_samples)]
    return write_tar_shards(records, out, samples_per_shard=per_shard), [r.id for r in records]


def consume(stream: ShardStream, limit: int | None = None, items: Iterable[StreamItem | StreamEnd] | None = None,
            ) -> list[str]:
    """Iterate ``items`` (default: the stream in-process, no workers), observing each item like a training loop
    would; returns the ids of the samples (``StreamEnd`` items carry none)."""
    ids = []
    for item in stream if items is None else items:
        if limit is not None and len(ids) == limit:
            break
        stream.observe(item)
        if isinstance(item, StreamItem):
            ids.append(item.value.id)
    return ids


def sample_ids(items: Iterable[StreamItem | StreamEnd]) -> list[str]:
    """Ids of the samples among ``items``, without observing them."""
    return [item.value.id for item in items if isinstance(item, StreamItem)]


# ---------------------------------------------------------------- records
def test_record_validation_rejects_unusable_samples() -> None:
    target = ref(8, 8)
    with pytest.raises(BadSampleError) as err:
        EditRecord(id="a", target=target, instruction="  ").validate()
    assert err.value.reason is SkipReason.EMPTY_TEXT and err.value.sample_id == "a"
    with pytest.raises(BadSampleError) as err:
        EditRecord(id="b", target=target, sources=(target, target), instruction="x",
                   inverse_instruction="y").validate()
    assert err.value.reason is SkipReason.MALFORMED
    assert EditRecord(id="c", target=target, instruction_cn="改成红色").validate().instruction_cn == "改成红色"
    with pytest.raises(ValueError):
        ImageRef(8, 8)  # neither path nor bytes


def test_probe_reads_size_from_header_and_honours_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x20, shown 20x40
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, format="JPEG", exif=exif)
    image = ImageRef.probe(write(tmp_path / "phone.jpg", buf.getvalue()), "phone")
    assert (image.width, image.height) == (20, 40)
    assert image.open().size == (20, 40)


def test_truncated_image_passes_the_scan_but_fails_decoding_as_a_counted_skip(tmp_path: Path) -> None:
    data = png_bytes(64, 64, 3)
    image = ImageRef.probe(write(tmp_path / "cut.png", data[: len(data) // 2]), "cut")  # header intact
    skips = SkipLog()
    with pytest.raises(BadSampleError) as err:
        EditRecord(id="cut", target=image, instruction="x").open_images()
    skips.add(err.value)
    assert skips.counts == {"undecodable_image": 1} and list(skips.recent) == [("cut", "undecodable_image")]


def test_skip_log_names_ids_and_stops_warning_after_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    skips = SkipLog(warn_limit=2, keep_ids=2)
    with caplog.at_level(logging.DEBUG, logger="firered_train.data.skips"):
        for i in range(4):
            skips.add(BadSampleError(SkipReason.MISSING_FILE, f"id{i}", "gone"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [("id0" in r.getMessage(), "id1" in r.getMessage()) for r in warnings] == [(True, False), (False, True)]
    assert skips.total == 4 and list(skips.recent) == [("id2", "missing_file"), ("id3", "missing_file")]
    restored = SkipLog()
    restored.load_state_dict(skips.state_dict())
    restored.merge({"missing_file": 1, "empty_text": 2})
    assert restored.counts == {"missing_file": 5, "empty_text": 2}


# ---------------------------------------------------------------- hand-made folder
def test_folder_reader_reads_the_documented_naming_and_counts_bad_samples(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root / "sunset_target.png", png_bytes(40, 30))  # single source, root -> task "default"
    write(root / "sunset.png", png_bytes(40, 20))
    write(root / "sunset.txt", "Change the sky to a sunset.\n")
    write(root / "sunset.cn.txt", "\ufeff把天空改成日落。")  # a BOM is not part of the text
    write(root / "add" / "hat_target.png", png_bytes(24, 24))  # multi-source in a task folder
    for k in range(3):
        write(root / "add" / f"hat_{k}.jpg", png_bytes(16 + k * 8, 16, fmt="JPEG"))
    write(root / "add" / "hat.txt", "Put the hat from Picture 2 on the man in Picture 1.")
    write(root / "t2i" / "cat_target.png", png_bytes(16, 32))  # no source: text-to-image
    write(root / "t2i" / "cat.cn.txt", "一只猫")
    write(root / "t2i" / "p_target.png", png_bytes(16, 16))  # x_0 has its own target: it is sample "p_0"
    write(root / "t2i" / "p.txt", "p")
    write(root / "t2i" / "p_0_target.png", png_bytes(16, 16))
    write(root / "t2i" / "p_0.png", png_bytes(8, 8))
    write(root / "t2i" / "p_0.txt", "p zero")
    # broken samples, one per kind
    write(root / "bad" / "orphan.txt", "target forgotten")
    write(root / "bad" / "garbage_target.png", b"this is not a png")
    write(root / "bad" / "garbage.txt", "x")
    write(root / "bad" / "silent_target.png", png_bytes(8, 8))
    write(root / "bad" / "silent.txt", "   \n")
    write(root / "bad" / "gap_target.png", png_bytes(8, 8))
    for k in (0, 2):
        write(root / "bad" / f"gap_{k}.png", png_bytes(8, 8))
    write(root / "bad" / "gap.txt", "x")
    write(root / "bad" / "both_target.png", png_bytes(8, 8))
    write(root / "bad" / "both.png", png_bytes(8, 8))
    write(root / "bad" / "both_0.png", png_bytes(8, 8))
    write(root / "bad" / "both.txt", "x")
    write(root / ".ipynb_checkpoints" / "sunset_target.png", png_bytes(8, 8))  # hidden: ignored
    write(root / "._sunset_target.png", b"macOS resource fork")

    skips = SkipLog()
    records = {r.id: r for r in read_folder(root, skips=skips)}
    assert sorted(records) == ["add/hat", "sunset", "t2i/cat", "t2i/p", "t2i/p_0"]
    sunset, hat = records["sunset"], records["add/hat"]
    assert (sunset.task, sunset.source_sizes, sunset.target_size) == ("default", ((40, 20),), (40, 30))
    assert (sunset.instruction, sunset.instruction_cn) == ("Change the sky to a sunset.", "把天空改成日落。")
    assert hat.task == "add" and hat.source_sizes == ((16, 16), (24, 16), (32, 16))
    assert records["t2i/cat"].sources == () and records["t2i/cat"].instruction_cn == "一只猫"
    assert records["t2i/p"].sources == () and records["t2i/p_0"].source_sizes == ((8, 8),)
    assert skips.counts == {"missing_file": 1, "undecodable_image": 1, "empty_text": 1, "malformed": 2}
    assert sorted(sid for sid, _ in skips.recent) == ["bad/both", "bad/gap", "bad/garbage", "bad/orphan",
                                                      "bad/silent"]


# ---------------------------------------------------------------- JSONL
def test_jsonl_reader_uses_firered_field_names_and_skips_bad_lines(tmp_path: Path) -> None:
    write(tmp_path / "img" / "a.png", png_bytes(30, 20))
    write(tmp_path / "img" / "b.png", png_bytes(20, 30))
    write(tmp_path / "img" / "t.png", png_bytes(32, 32))
    rows = [
        {"id": "one", "task": "adjust", "source_image": "img/a.png", "target_image": "img/t.png",
         "instruction": "Make it red.", "instruction_cn": "变红"},
        {"source_image": ["img/a.png", "img/b.png"], "target_image": "img/t.png", "instruction": "Merge."},
        {"source_image": None, "edit_image": "img/t.png", "instruction_cn": "一只猫"},
        {"id": "sized", "source_image": [], "target_image": "img/t.png", "instruction": "x",
         "target_image_size": {"width": 999, "height": 111}},  # trusted: the header is not read
        {"id": "gone", "target_image": "img/missing.png", "instruction": "x"},
        {"id": "web", "target_image": "https://example.com/t.png", "instruction": "x"},
        {"id": "typed", "target_image": "img/t.png", "instruction": 5},
        {"id": "mute", "target_image": "img/t.png", "instruction": "", "instruction_cn": None},
        [1, 2, 3],
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, "")  # blank lines are not samples
    lines.append("{not json")
    manifest = write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")

    skips = SkipLog()
    records = read_jsonl(manifest, skips=skips)
    assert [r.id for r in records] == ["one", "train.jsonl:2", "train.jsonl:4", "sized"]
    one, two, t2i, sized = records
    assert (one.task, one.source_sizes, one.target_size, one.instruction_cn) == ("adjust", ((30, 20),), (32, 32),
                                                                                 "变红")
    assert two.task == "default" and two.source_sizes == ((30, 20), (20, 30))
    assert t2i.sources == () and t2i.target.path == tmp_path / "img" / "t.png"
    assert sized.target_size == (999, 111)
    assert skips.counts == {"missing_file": 2, "malformed": 3, "empty_text": 1}
    assert sorted(sid for sid, _ in skips.recent) == ["gone", "mute", "train.jsonl:10", "train.jsonl:11", "typed",
                                                      "web"]


# ---------------------------------------------------------------- tar shards
def test_tar_reader_skips_and_counts_each_kind_of_bad_sample(tmp_path: Path) -> None:
    shard = tmp_path / "mixed.tar"
    with tarfile.open(shard, "w") as tar:
        add_tar_member(tar, "k0.src0.png", png_bytes(20, 10))
        add_tar_member(tar, "k0.tgt.png", png_bytes(20, 12))
        add_tar_member(tar, "k0.json", json.dumps({"id": "good0", "task": "add", "instruction": "a"}).encode())
        add_tar_member(tar, "k1.src0.png", png_bytes(8, 8))  # no target
        add_tar_member(tar, "k1.txt", b"x")
        add_tar_member(tar, "k2.tgt.png", png_bytes(8, 8))
        add_tar_member(tar, "k2.json", b"{broken")
        add_tar_member(tar, "k3.tgt.png", b"garbage")
        add_tar_member(tar, "k3.txt", b"x")
        add_tar_member(tar, "k4.tgt.png", png_bytes(8, 8))
        add_tar_member(tar, "k4.json", b'{"instruction": ""}')
        add_tar_member(tar, "sub/k5.tgt.jpg", png_bytes(16, 8, fmt="JPEG"))  # keys may contain folders
        add_tar_member(tar, "sub/k5.cn.txt", "改".encode())
    skips = SkipLog()
    found = list(iter_tar_samples(shard, 0, skips))
    assert [(i, r.id) for i, r in found] == [(0, "good0"), (5, "mixed.tar:sub/k5")]
    assert found[0][1].source_sizes == ((20, 10),) and found[0][1].task == "add"
    assert found[1][1].instruction_cn == "改" and found[1][1].target.open().size == (16, 8)
    assert skips.counts == {"missing_file": 1, "malformed": 1, "undecodable_image": 1, "empty_text": 1}
    assert sorted(sid for sid, _ in skips.recent) == ["mixed.tar:k1", "mixed.tar:k2", "mixed.tar:k3", "mixed.tar:k4"]
    assert [i for i, _ in iter_tar_samples(shard, 1, SkipLog())] == [5]  # resuming past sample 0


def test_tar_shards_round_trip_records_from_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root / "x_target.png", png_bytes(24, 16, 9))
    write(root / "x_0.png", png_bytes(16, 24, 1))
    write(root / "x_1.jpg", png_bytes(16, 16, 2, fmt="JPEG"))
    write(root / "x.txt", "Swap Image 1 and Image 2.")
    write(root / "x.cn.txt", "交换图1和图2")
    (original,) = read_folder(root)
    shards = write_tar_shards([original], tmp_path / "shards", samples_per_shard=4)
    assert [p.name for p in shards] == ["shard-000000.tar"] and not list((tmp_path / "shards").glob(".*"))
    ((_, copy),) = list(iter_tar_samples(shards[0], 0, SkipLog()))
    assert (copy.id, copy.task, copy.instruction, copy.instruction_cn) == ("x", "default", original.instruction,
                                                                           original.instruction_cn)
    assert copy.source_sizes == original.source_sizes and copy.target_size == original.target_size
    sources, target = copy.open_images()
    originals, original_target = original.open_images()
    assert [s.tobytes() for s in sources] == [s.tobytes() for s in originals]
    assert target.tobytes() == original_target.tobytes()


# ---------------------------------------------------------------- streaming: split across ranks and workers
def fake_worker(monkeypatch: pytest.MonkeyPatch, worker: int, num_workers: int) -> None:
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=num_workers))


@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (2, 2), (3, 2)])
def test_stream_splits_shards_across_ranks_and_workers_without_overlap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world_size: int, num_workers: int) -> None:
    shards, ids = make_corpus(tmp_path, n_samples=45, per_shard=4)  # 12 shards, the last one short
    for epoch in (0, 1):
        seen: dict[tuple[int, int], list[str]] = {}
        for rank in range(world_size):
            stream = ShardStream(shards, iter_tar_samples, StreamConfig(rank=rank, world_size=world_size, seed=3))
            stream.set_epoch(epoch)
            for worker in range(num_workers):
                fake_worker(monkeypatch, worker, num_workers)
                seen[rank, worker] = sample_ids(stream)
        everything = [i for part in seen.values() for i in part]
        assert len(everything) == len(set(everything)), "a sample was read by two (rank, worker) readers"
        assert sorted(everything) == sorted(ids), "a sample was read by no reader"
        assert all(seen.values()), "with 12 shards every reader has work"


def test_shard_order_changes_with_the_epoch_and_is_the_same_on_every_rank(tmp_path: Path) -> None:
    shards, _ = make_corpus(tmp_path, n_samples=20, per_shard=2)
    streams = [ShardStream(shards, iter_tar_samples, StreamConfig(rank=r, world_size=2, seed=5)) for r in range(2)]
    assert streams[0].shard_order(0) == streams[1].shard_order(0)
    assert streams[0].shard_order(0) != streams[0].shard_order(1)
    assert sorted(streams[0].shard_order(7)) == list(range(10))
    plain = ShardStream(shards, iter_tar_samples, StreamConfig(shuffle_shards=False))
    assert plain.shard_order(3) == list(range(10))


def test_real_dataloader_workers_split_a_rank_without_overlap(tmp_path: Path) -> None:
    shards, ids = make_corpus(tmp_path, n_samples=30, per_shard=3)
    got = []
    for rank in range(2):
        stream = ShardStream(shards, iter_tar_samples, StreamConfig(rank=rank, world_size=2))
        got += sample_ids(DataLoader(stream, batch_size=None, num_workers=2))
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


# ---------------------------------------------------------------- streaming: exact resume
@pytest.mark.parametrize("stop", [0, 1, 4, 5, 17, 29])
def test_stream_resumes_at_the_exact_next_sample(tmp_path: Path, stop: int) -> None:
    shards, _ = make_corpus(tmp_path, n_samples=30, per_shard=4)
    config = StreamConfig(seed=11)
    full = consume(ShardStream(shards, iter_tar_samples, config))
    interrupted = ShardStream(shards, iter_tar_samples, config)
    head = consume(interrupted, limit=stop)
    state = json.loads(json.dumps(interrupted.state_dict()))  # a checkpoint goes through a file
    resumed = ShardStream(shards, iter_tar_samples, config)
    resumed.load_state_dict(state)
    assert head + consume(resumed) == full


def test_stream_resume_is_exact_through_a_multi_worker_dataloader(tmp_path: Path) -> None:
    shards, _ = make_corpus(tmp_path, n_samples=27, per_shard=3)  # 9 shards over 2 workers: uneven lengths
    config = StreamConfig(seed=2)

    def run(stream: ShardStream, limit: int | None = None) -> list[str]:
        return consume(stream, limit, DataLoader(stream, batch_size=None, num_workers=2))

    full = run(ShardStream(shards, iter_tar_samples, config))
    for stop in (7, 20):  # stops after a worker-0 item and after a worker-1 item
        interrupted = ShardStream(shards, iter_tar_samples, config)
        head = run(interrupted, limit=stop)
        resumed = ShardStream(shards, iter_tar_samples, config)
        resumed.load_state_dict(interrupted.state_dict())
        assert head + run(resumed) == full


def test_merged_rank_states_resume_on_another_world_size(tmp_path: Path) -> None:
    shards, ids = make_corpus(tmp_path, n_samples=24, per_shard=3)
    states, consumed = [], []
    for rank in range(2):
        stream = ShardStream(shards, iter_tar_samples, StreamConfig(rank=rank, world_size=2))
        consumed += consume(stream, limit=5)
        states.append(stream.state_dict())
    single = ShardStream(shards, iter_tar_samples, StreamConfig())
    single.load_state_dict(merge_stream_states(states))
    rest = consume(single)
    assert sorted(consumed + rest) == sorted(ids) and not set(consumed) & set(rest)


def test_stream_counts_bad_samples_and_unreadable_shards_from_the_workers(tmp_path: Path) -> None:
    shards, ids = make_corpus(tmp_path, n_samples=6, per_shard=3)  # shard-000000.tar, shard-000001.tar
    with tarfile.open(tmp_path / "aa-bad.tar", "w") as tar:
        add_tar_member(tar, "b0.tgt.png", b"garbage")
        add_tar_member(tar, "b0.txt", b"x")
        add_tar_member(tar, "b1.tgt.png", png_bytes(8, 8))
        add_tar_member(tar, "b1.txt", b"fine")
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    with tarfile.open(tmp_path / "full.tar", "w") as tar:
        add_tar_member(tar, "t0.tgt.png", png_bytes(8, 8))
        add_tar_member(tar, "t0.txt", b"complete")
        buf = io.BytesIO()
        noise.save(buf, format="PNG")
        add_tar_member(tar, "t1.tgt.png", buf.getvalue())
    with tarfile.open(tmp_path / "full.tar") as tar:
        cut = tar.getmember("t1.tgt.png").offset_data + 100
    write(tmp_path / "ac-truncated.tar", (tmp_path / "full.tar").read_bytes()[:cut])
    # Sorted order: aa-bad, ab-missing, ac-truncated, shard-0, shard-1. Worker 0 reads aa-bad, ac-truncated and
    # shard-1; worker 1 reads ab-missing and shard-0: every skip is followed by a good item that reports it.
    all_shards = [tmp_path / n for n in ("aa-bad.tar", "ab-missing.tar", "ac-truncated.tar")] + shards
    stream = ShardStream(all_shards, iter_tar_samples, StreamConfig(shuffle_shards=False))
    got = consume(stream, items=DataLoader(stream, batch_size=None, num_workers=2))
    assert sorted(got) == sorted([*ids, "aa-bad.tar:b1", "ac-truncated.tar:t0"])
    assert stream.skip_counts() == {"undecodable_image": 1, "missing_file": 1, "malformed": 1}
    state = stream.state_dict()
    assert state["skips"] == stream.skip_counts() and state["positions"]["aa-bad.tar"] == 2


def _tail_corpus(root: Path) -> list[Path]:
    """Four shards whose bad samples come after the last good sample of a worker (see the test below)."""
    garbage = {"tgt.png": b"garbage", "txt": b"x"}
    shards = {"aa-tail.tar": [("a0", {"tgt.png": png_bytes(8, 8), "txt": b"a"}),
                              ("a1", {"tgt.png": png_bytes(8, 8), "txt": b"b"}), ("a2", garbage)],
              "ac-tail.tar": [("c0", {"tgt.png": png_bytes(8, 8), "txt": b"c"}),
                              ("c1", {"tgt.png": png_bytes(8, 8), "txt": b"  "})],
              "ad-bad.tar": [("d0", garbage)]}
    for name, samples in shards.items():
        with tarfile.open(root / name, "w") as tar:
            for key, files in samples:
                for ext, data in files.items():
                    add_tar_member(tar, f"{key}.{ext}", data)
    return [root / n for n in ("aa-tail.tar", "ab-missing.tar", "ac-tail.tar", "ad-bad.tar")]


def test_skips_after_a_workers_last_good_sample_reach_the_main_process(tmp_path: Path) -> None:
    shards = _tail_corpus(tmp_path)
    expected = {"undecodable_image": 2, "missing_file": 1, "empty_text": 1}
    # Two workers, shards in sorted order: worker 0 reads aa-tail (a2 broken at its end, reported by c0) and
    # ac-tail (c1 empty at its end: nothing after it); worker 1 reads ab-missing (no such file) and ad-bad (one
    # broken sample): it never yields a sample at all. Only the workers' StreamEnd items report those skips.
    stream = ShardStream(shards, iter_tar_samples, StreamConfig(shuffle_shards=False))
    got = consume(stream, items=DataLoader(stream, batch_size=None, num_workers=2))
    assert sorted(got) == ["aa-tail.tar:a0", "aa-tail.tar:a1", "ac-tail.tar:c0"]
    assert stream.skip_counts() == expected
    state = json.loads(json.dumps(stream.state_dict()))
    assert state["skips"] == expected and state["finished"] == sorted(p.name for p in shards)
    # resuming the finished epoch opens no shard again and counts nothing twice
    resumed = ShardStream(shards, iter_tar_samples, StreamConfig(shuffle_shards=False))
    resumed.load_state_dict(state)
    assert consume(resumed, items=DataLoader(resumed, batch_size=None, num_workers=2)) == []
    assert resumed.skip_counts() == expected


def test_an_item_from_a_later_shard_finishes_the_earlier_ones(tmp_path: Path) -> None:
    shards = _tail_corpus(tmp_path)
    config = StreamConfig(shuffle_shards=False)
    interrupted = ShardStream(shards, iter_tar_samples, config)  # one reader: aa, ab, ac, ad in order
    assert consume(interrupted, limit=3) == ["aa-tail.tar:a0", "aa-tail.tar:a1", "ac-tail.tar:c0"]
    state = interrupted.state_dict()
    assert state["finished"] == ["aa-tail.tar", "ab-missing.tar"] and state["positions"]["ac-tail.tar"] == 1
    assert state["skips"] == {"undecodable_image": 1, "missing_file": 1}  # a2 and ab, reported by c0
    resumed = ShardStream(shards, iter_tar_samples, config)
    resumed.load_state_dict(state)
    assert consume(resumed) == []  # a2 and ab-missing are not read (and counted) again
    assert resumed.skip_counts() == {"undecodable_image": 2, "missing_file": 1, "empty_text": 1}


def test_stream_rejects_a_state_naming_unknown_shards(tmp_path: Path) -> None:
    shards, _ = make_corpus(tmp_path, n_samples=4, per_shard=2)
    stream = ShardStream(shards, iter_tar_samples)
    with pytest.raises(ValueError, match="shards this stream does not have"):
        stream.load_state_dict({"epoch": 0, "positions": {"other.tar": 3}, "next_worker": 0, "num_workers": 0,
                                "skips": {}})


# ---------------------------------------------------------------- parquet
def test_parquet_without_pyarrow_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              ) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail even if pyarrow exists
    with pytest.raises(ImportError, match="pip install pyarrow"):
        next(iter_parquet_samples(tmp_path / "x.parquet", 0, SkipLog()))


def test_parquet_rows_become_records() -> None:
    row = {"id": None, "task": "compose", "target_image": {"bytes": png_bytes(20, 10), "path": None},
           "source_image": [png_bytes(8, 8), png_bytes(16, 8)], "instruction": " Merge ", "instruction_cn": None}
    record = parquet_reader.record_from_row(row, "p.parquet", 7)
    assert (record.id, record.task, record.instruction) == ("p.parquet:7", "compose", "Merge")
    assert record.source_sizes == ((8, 8), (16, 8)) and record.target_size == (20, 10)
    single = parquet_reader.record_from_row({"target_image": png_bytes(8, 8), "source_image": png_bytes(4, 4),
                                             "instruction": "x"}, "p.parquet", 0)
    assert single.source_sizes == ((4, 4),)
    with pytest.raises(BadSampleError) as err:
        parquet_reader.record_from_row({"target_image": None, "instruction": "x"}, "p.parquet", 1)
    assert err.value.reason is SkipReason.MISSING_FILE


class FakeParquetFile:
    """The three pyarrow.parquet.ParquetFile members the reader uses, over row groups given as lists of dicts."""

    groups: list[list[dict]] = []

    def __init__(self, path: Path) -> None:
        self.num_row_groups = len(self.groups)
        self.metadata = SimpleNamespace(row_group=lambda g: SimpleNamespace(num_rows=len(self.groups[g])))
        self.read = []

    def read_row_group(self, g: int) -> SimpleNamespace:
        self.read.append(g)
        return SimpleNamespace(to_pylist=lambda: list(self.groups[g]))


def test_parquet_reader_skips_whole_row_groups_before_the_resume_point(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": f"r{i}", "target_image": png_bytes(8, 8), "instruction": "" if i == 4 else "x"} for i in range(7)]
    FakeParquetFile.groups = [rows[0:3], rows[3:6], rows[6:7]]
    opened: list[FakeParquetFile] = []

    def open_file(path: Path) -> FakeParquetFile:
        opened.append(FakeParquetFile(path))
        return opened[-1]

    monkeypatch.setattr(parquet_reader, "_pyarrow_parquet", lambda: SimpleNamespace(ParquetFile=open_file))
    skips = SkipLog()
    assert [(i, r.id) for i, r in iter_parquet_samples(Path("a.parquet"), 0, skips)] == [
        (0, "r0"), (1, "r1"), (2, "r2"), (3, "r3"), (5, "r5"), (6, "r6")]
    assert skips.counts == {"empty_text": 1}
    assert [i for i, _ in iter_parquet_samples(Path("a.parquet"), 5, SkipLog())] == [5, 6]
    assert opened[-1].read == [1, 2]  # row group 0 (rows 0-2) lies before row 5: never read


def test_parquet_shards_stream_and_resume(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": f"r{i}", "target_image": png_bytes(8 + i, 8), "source_image": [png_bytes(8, 8)],
             "instruction": "x" if i != 3 else ""} for i in range(7)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=2)
    skips = SkipLog()
    assert [r.id for _, r in iter_parquet_samples(tmp_path / "a.parquet", 0, skips)] == [
        "r0", "r1", "r2", "r4", "r5", "r6"]
    assert skips.counts == {"empty_text": 1}
    assert [i for i, _ in iter_parquet_samples(tmp_path / "a.parquet", 5, SkipLog())] == [5, 6]
