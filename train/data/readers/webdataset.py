"""Tar shards in WebDataset layout: reading them as a stream, and writing them from records.

A shard is an ordinary (optionally gzip-compressed) tar file. The files of one sample sit next to each other and
share a key: the member name up to the first dot of its base name. Per sample::

    000042.src0.png   source images, numbered from 0 in order (none: text-to-image); any image extension
    000042.src1.jpg
    000042.tgt.png    the target image                                          (required)
    000042.json       {"instruction": ..., "instruction_cn": ..., "inverse_instruction": ...,
                       "inverse_instruction_cn": ..., "task": ..., "id": ...}   (FireRed's field names)
    000042.txt        English instruction, used when the JSON has none (optional)
    000042.cn.txt     Chinese instruction, likewise (optional)

The sample id is the JSON ``id``, else ``<shard name>:<key>``. Reading uses ``tarfile``'s streaming mode, so a
shard is read front to back once and never seeked; skipping the samples before a resume position reads member
headers only. A sample with a missing target, gaps in the source numbers, bad JSON, an undecodable image or no
instruction is skipped and counted; a truncated or corrupt shard ends that shard (counted once) and reading
goes on with the next. ``write_tar_shards`` converts records (from a folder or a JSONL manifest) into shards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from PIL import Image

from ..record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..skips import SkipLog

log = logging.getLogger(__name__)

_SOURCE_EXT = re.compile(r"^src(?P<k>\d+)\.[a-z0-9]+$")
_TARGET_EXT = re.compile(r"^tgt\.[a-z0-9]+$")
_TEXT_FIELDS = ("instruction", "instruction_cn", "inverse_instruction", "inverse_instruction_cn")


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member: ``a/b/000042.src0.png`` -> ``("a/b/000042", "src0.png")``."""
    folder, _, base = name.removeprefix("./").rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _texts(files: dict[str, bytes], sid: str) -> tuple[dict[str, Any], str]:
    """Record fields from the sample's JSON and text files, and the sample id."""
    meta: dict[str, Any] = {}
    if "json" in files:
        try:
            meta = json.loads(files["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadSampleError(SkipReason.MALFORMED, sid, f"bad JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise BadSampleError(SkipReason.MALFORMED, sid, "the JSON must be an object")
    sid = str(meta.get("id") or sid)
    fields = {key: meta.get(key) or "" for key in _TEXT_FIELDS}
    for key, ext in (("instruction", "txt"), ("instruction_cn", "cn.txt")):
        if not fields[key] and ext in files:
            fields[key] = files[ext].decode("utf-8", errors="replace")
    if not all(isinstance(v, str) for v in fields.values()):
        raise BadSampleError(SkipReason.MALFORMED, sid, "instruction fields must be strings")
    fields = {k: v.strip() for k, v in fields.items()}
    if meta.get("task"):
        fields["task"] = str(meta["task"])
    return fields, sid


def image_members(files: Mapping[str, object], sid: str, key: str) -> tuple[str, list[str]]:
    """(target extension, source extensions in order) of one sample's members; raises ``BadSampleError``."""
    targets = [ext for ext in files if _TARGET_EXT.match(ext)]
    if len(targets) != 1:
        raise BadSampleError(SkipReason.MISSING_FILE if not targets else SkipReason.MALFORMED, sid,
                             f"needs exactly one {key}.tgt.<ext>, found {sorted(targets)}")
    sources = {int(m["k"]): ext for ext in files if (m := _SOURCE_EXT.match(ext))}
    if sorted(sources) != list(range(len(sources))):
        raise BadSampleError(SkipReason.MALFORMED, sid, f"sources must be numbered 0..N-1: {sorted(sources)}")
    return targets[0], [sources[k] for k in sorted(sources)]


def record_from_files(files: dict[str, bytes], shard: str, key: str) -> EditRecord:
    """Build and validate one sample from its members (extension -> bytes); raises ``BadSampleError``."""
    fields, sid = _texts(files, f"{shard}:{key}")
    target, sources = image_members(files, sid, key)

    def probe(ext: str) -> ImageRef:
        return ImageRef.probe(files[ext], sid, name=f"{shard}:{key}.{ext}")

    record = EditRecord(id=sid, target=probe(target), sources=tuple(probe(ext) for ext in sources), **fields)
    return record.validate()


def member_groups(tar: tarfile.TarFile, start: int = 0) -> Iterator[tuple[int, str, dict[str, bytes],
                                                                          dict[str, tarfile.TarInfo]]]:
    """(sample index, key, files, members) of consecutive same-key members (extension -> bytes / ``TarInfo``);
    samples before ``start`` are not read."""
    index, key, files, members = -1, None, {}, {}
    for member in tar:
        if not member.isfile():
            continue
        member_key, ext = split_member_name(member.name)
        if member_key != key:
            if key is not None and index >= start:
                yield index, key, files, members
            index, key, files, members = index + 1, member_key, {}, {}
        if index >= start:  # in streaming mode an unread member's data is skipped, not decompressed into memory
            handle = tar.extractfile(member)
            files[ext] = handle.read() if handle is not None else b""
            members[ext] = member
    if key is not None and index >= start:
        yield index, key, files, members


def iter_tar_samples(path: Path, start: int, skips: SkipLog) -> Iterator[tuple[int, EditRecord]]:
    """A ``ShardReader`` for WebDataset tar shards (see ``stream.py``)."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for index, key, files, _ in member_groups(tar, start):
                try:
                    yield index, record_from_files(files, path.name, key)
                except BadSampleError as exc:
                    skips.add(exc)
    except FileNotFoundError as exc:
        raise BadSampleError(SkipReason.MISSING_FILE, path.name, f"no such shard: {path}") from exc
    except (OSError, tarfile.TarError, EOFError) as exc:  # EOFError: a truncated gzip stream
        raise BadSampleError(SkipReason.MALFORMED, path.name, f"unreadable shard: {exc}") from exc


def _image_bytes(ref: ImageRef) -> tuple[bytes, str]:
    """Encoded bytes of an image and the extension they should be stored under."""
    data = ref.read_bytes()
    if ref.path is not None and ref.is_whole_file and ref.path.suffix:
        return data, ref.path.suffix.lower().lstrip(".")
    with Image.open(io.BytesIO(data)) as img:
        fmt = (img.format or "png").lower()
    return data, {"jpeg": "jpg"}.get(fmt, fmt)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_sample(tar: tarfile.TarFile, key: str, record: EditRecord) -> None:
    for k, ref in enumerate(record.sources):
        data, ext = _image_bytes(ref)
        _add(tar, f"{key}.src{k}.{ext}", data)
    data, ext = _image_bytes(record.target)
    _add(tar, f"{key}.tgt.{ext}", data)
    meta = {"id": record.id, "task": record.task, **{f: getattr(record, f) for f in _TEXT_FIELDS}}
    _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))


def write_tar_shards(records: Iterable[EditRecord], out_dir: str | Path, samples_per_shard: int = 1000,
                     prefix: str = "shard") -> list[Path]:
    """Write records as ``<prefix>-000000.tar`` ... (keys are running numbers; ids go into the JSON).

    Each shard is written to a temporary name and renamed when complete, so a crash never leaves a shard that
    looks finished but is not. Shuffle ``records`` first if the corpus has any order (streams read in order).
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    batch: list[EditRecord] = []
    count = 0

    def flush() -> None:
        final = out / f"{prefix}-{len(written):06d}.tar"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{final.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            for offset, record in enumerate(batch):
                _write_sample(tar, f"{count - len(batch) + offset:09d}", record)
        os.replace(tmp, final)
        written.append(final)
        batch.clear()

    for record in records:
        batch.append(record)
        count += 1
        if len(batch) == samples_per_shard:
            flush()
    if batch:
        flush()
    log.info("wrote %d samples into %d shard(s) in %s", count, len(written), out)
    return written
