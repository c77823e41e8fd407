"""A size index of each WebDataset tar shard, so a corpus is listed without holding its images in memory.

The bucket sampler needs every sample's task and image sizes before the first step; reading the images themselves
can wait until a batch needs them. In an uncompressed tar a member's data is ``size`` contiguous bytes at
``offset_data`` of the file, so one pass over a shard gives each sample's sizes *and* where its images are. That
pass is written down next to the shard, once, as ``<shard>.index.json`` (``shard_index``: atomic writes,
staleness, skips), with one entry per good sample::

    {"key": "000000042", "id": "...", "task": "...", "texts": {"instruction": "..."},
     "target": [width, height, offset, length, ext], "sources": [[...], ...]}

``tar_records(shard, skips)`` returns the shard's records: ids, tasks, instructions and ``ImageRef`` values that
know their size and read their bytes from the shard only when opened. The records are the ones
``iter_tar_samples`` gives, in the same order, and the skips are counted the same, whether the index was just
written or read. ``firered cache`` and the first training run write the indexes; later runs only read them.
Compressed shards (``.tar.gz``) have no byte offsets to point at: ``data.records.read_records`` keeps reading those
into memory.

Public API: ``tar_records``, ``index_path``, ``INDEX_SUFFIX``.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from ..record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..skips import SkipLog
from .shard_index import INDEX_SUFFIX, index_path, indexed_records
from .webdataset import image_members, member_groups, record_from_files

__all__ = ["INDEX_SUFFIX", "index_path", "tar_records"]

_KIND = ("firered-tar-index", 1)
_TEXT_FIELDS = ("instruction", "instruction_cn", "inverse_instruction", "inverse_instruction_cn")


# ---------------------------------------------------------------------------------------------------------------
# writing


def _image(ref: ImageRef, member: tarfile.TarInfo, ext: str) -> list[Any]:
    return [ref.width, ref.height, member.offset_data, member.size, ext]


def _entry(record: EditRecord, key: str, files: dict[str, bytes], members: dict[str, tarfile.TarInfo]) -> dict:
    target, sources = image_members(files, record.id, key)
    return {"key": key, "id": record.id, "task": record.task,
            "texts": {f: getattr(record, f) for f in _TEXT_FIELDS if getattr(record, f)},
            "target": _image(record.target, members[target], target),
            "sources": [_image(ref, members[ext], ext) for ref, ext in zip(record.sources, sources)]}


def _scan(shard: Path, skips: SkipLog) -> dict[str, Any]:
    """One pass over an uncompressed shard: its entries and skip counts; skips go into ``skips`` too."""
    entries, errors = [], []
    try:
        with tarfile.open(shard, mode="r:") as tar:  # random-access mode: members know their data offsets
            for _, key, files, members in member_groups(tar):
                try:
                    entries.append(_entry(record_from_files(files, shard.name, key), key, files, members))
                except BadSampleError as exc:
                    errors.append(exc)
    except (OSError, tarfile.TarError, EOFError) as exc:  # the samples before the damage stay, as when streaming
        errors.append(BadSampleError(SkipReason.MALFORMED, shard.name, f"unreadable shard: {exc}"))
    for exc in errors:
        skips.add(exc)
    counts = Counter(exc.reason.value for exc in errors)
    return {"skips": dict(sorted(counts.items())), "samples": entries}


# ---------------------------------------------------------------------------------------------------------------
# reading


def _ref(shard: Path, key: str, image: list[Any]) -> ImageRef:
    width, height, offset, length, ext = image
    return ImageRef(int(width), int(height), path=shard, name=f"{shard.name}:{key}.{ext}", offset=int(offset),
                    length=int(length))


def _record(shard: Path, entry: dict[str, Any]) -> EditRecord:
    key = entry["key"]
    return EditRecord(id=entry["id"], task=entry["task"], target=_ref(shard, key, entry["target"]),
                      sources=tuple(_ref(shard, key, s) for s in entry["sources"]), **entry["texts"])


def tar_records(shard: Path, skips: SkipLog) -> list[EditRecord]:
    """The records of an uncompressed tar shard, images read lazily; indexes the shard first if needed."""
    return indexed_records(shard, _KIND, _scan, _record, skips)
