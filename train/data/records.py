"""The trainer's sample list: ``data.reader`` + ``data.path`` -> ``EditRecord`` values (``data.readers``).

The Multi-Condition Aware Bucket Sampler plans every step from all samples' sizes, so the trainer works on a
list of records (metadata only: image files are decoded when a batch needs them).

* ``folder`` and ``jsonl`` are listed directly (the JSONL reader trusts ``*_image_size`` fields when present,
  which makes listing a large manifest cheap).
* ``webdataset`` shards that are plain ``.tar`` files and ``parquet`` shards are listed from their size index
  (``data.readers.tar_index`` / ``parquet_index``: ``<shard>.index.json``, written by the first read, e.g.
  ``firered cache``): memory holds each sample's id, task, instructions and image sizes and where its images are
  (byte offsets, or row group and row); images are read from the shard when a batch needs them.
* compressed tar shards (``.tar.gz``) are read front to back once and their records kept, images included (they
  have no offsets to point at). That suits corpora that fit in memory; for larger ones, write plain ``.tar``
  shards, cache them (``firered cache``: training then holds only latents on disk) or write a JSONL manifest with
  image sizes.

Bad samples are skipped and counted in the ``SkipLog`` by the readers. Every rank lists the same samples in the
same order, which the bucket sampler needs to give ranks disjoint shards.

Validation samples (``validation_records``): ``val_path`` read with the same reader, or else the first ``n_val``
training samples; their ids get a ``val/`` prefix so they never collide with training ids in a cache.

Public API: ``read_records``, ``validation_records``, ``VAL_PREFIX``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .readers.jsonl import manifest_paths
from .readers import (FolderConfig, JsonlConfig, iter_tar_samples, parquet_records, read_folder, read_jsonl,
                           tar_records)
from .record import BadSampleError, EditRecord
from .skips import SkipLog

log = logging.getLogger(__name__)

__all__ = ["read_records", "validation_records", "VAL_PREFIX"]

VAL_PREFIX = "val/"

_SHARD_PATTERNS = {"webdataset": ("*.tar", "*.tar.gz", "*.tgz"), "parquet": ("*.parquet",)}


def _shards(root: Path, reader: str) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data.path {str(root)!r} does not exist")
    found = sorted({p for pattern in _SHARD_PATTERNS[reader] for p in root.rglob(pattern)})
    if not found:
        raise FileNotFoundError(f"data.path {str(root)!r} has no {reader} shards ({', '.join(_SHARD_PATTERNS[reader])})")
    return found


def read_records(reader: str, path: str, *, default_task: str = "default",
                 skips: SkipLog | None = None) -> list[EditRecord]:
    """Every good sample of ``path`` read with ``reader``, in a stable order."""
    if not path:
        raise ValueError("data.path is empty: give a pairs folder, a .jsonl manifest or a folder of shards")
    skips = skips if skips is not None else SkipLog()
    root = Path(path).expanduser()
    if reader == "folder":
        return read_folder(root, FolderConfig(default_task=default_task), skips)
    if reader == "jsonl":
        manifests = manifest_paths(root)
        return read_jsonl(manifests, JsonlConfig(default_task=default_task), skips)
    if reader not in _SHARD_PATTERNS:
        raise ValueError(f"data.reader {reader!r} is not one of folder, jsonl, webdataset, parquet")
    records: list[EditRecord] = []
    in_memory = 0
    for shard in _shards(root, reader):
        # images stay in the shard until a batch opens them
        if reader == "parquet":
            records.extend(parquet_records(shard, skips))
            continue
        if shard.suffix == ".tar":
            records.extend(tar_records(shard, skips))
            continue
        in_memory += 1
        try:
            for _, record in iter_tar_samples(shard, 0, skips):
                records.append(record)
        except BadSampleError as exc:  # an unreadable shard counts once; the records read before it stay
            skips.add(exc)
    if in_memory:
        log.warning("data: %d compressed tar shards held in memory (images included); write plain .tar shards, "
                    "cache the corpus or use a JSONL manifest when it does not fit", in_memory)
    return records


def validation_records(records: list[EditRecord], *, reader: str, val_path: str | None, n_val: int,
                       default_task: str | None = None, skips: SkipLog | None = None) -> list[EditRecord]:
    """A run's validation samples: ``val_path`` read with ``reader`` when given, else the first ``n_val`` of
    ``records``; ids prefixed with ``val/``."""
    if val_path:
        chosen = read_records(reader, val_path, default_task=default_task, skips=skips)
    else:
        chosen = records[:n_val]
    return [dataclasses.replace(r, id=VAL_PREFIX + r.id) for r in chosen]
