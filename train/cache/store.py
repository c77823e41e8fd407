"""The offline cache: condition embeddings and VAE latents stored as safetensors shards, keyed by sample id.

Encoding is most of the cost of a training step at low resolution, and a 7B condition encoder does not need to be
in memory while the transformer trains. ``firered cache`` (``cache.build.build_cache``) computes everything a
sample contributes that does not change during training; training with ``data.cache_dir`` then reads it.

Layout of a cache folder::

    manifest.json                   format, version, the settings the cache depends on (see ``CacheSpec``)
    null.safetensors                "embeds" [L0, D]: the null (empty-prompt) condition used for text drop
    shards/r000-00000.safetensors   a few hundred samples each; rank 0's first shard, ...

Per sample ``i`` of a shard (its position in the shard's ``samples`` metadata), tensors ``{i}.target``
``[C, H/f, W/f]`` and ``{i}.source{k}`` (normalised latents at the sample's bucket sizes, sources in their
original order) and ``{i}.cond.en`` / ``{i}.cond.cn`` ``[L, D]`` (embeddings of the instruction against the
bucket-sized sources, padding removed). The shard's ``samples`` metadata lists ``{"id", "dims", "langs"}`` per
sample, so the index is rebuilt from the shard headers alone, without reading tensor data.

Writes are atomic: every shard is written to a temporary name and renamed, so an interrupted ``firered cache``
leaves only whole shards; rerunning it skips the ids already stored and writes new shards after the existing ones.
Several ranks write disjoint shard names (``r<rank>-``), so ``accelerate launch firered cache`` needs no locking.

What a cache cannot hold: Stochastic Instruction Alignment drops and reorders sources, which changes what the
condition encoder sees. Training from a cache therefore keeps every sample's sources in their original order
(the trainer turns SIA's image drop and shuffle off and says so); the EN/CN choice and the text drop still work.

Public API: ``CACHE_FORMAT``, ``CacheSpec``, ``CachedSample``, ``CacheWriter``, ``LatentCache``,
``CacheError``, ``module_digest``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from firered_core.loading import WeightSource, open_weights, read_metadata
from firered_core.loading.save import write_safetensors

from ..data.buckets import BucketDims, Dims

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "CacheError", "CacheSpec", "CachedSample", "CacheWriter",
           "LatentCache", "module_digest"]

CACHE_FORMAT = "firered-train-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
NULL_FILE = "null.safetensors"
SHARD_DIR = "shards"
_SHARD_NAME = re.compile(r"^r(\d{3,})-(\d{5,})\.safetensors$")
LANGUAGES = ("en", "cn")


class CacheError(ValueError):
    """A cache folder is missing, damaged, or was made with settings this run does not use."""


def module_digest(module: nn.Module) -> str:
    """A short digest of a module's parameter names, shapes, dtypes and bytes (its identity for the cache)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if not t.is_meta:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CacheSpec:
    """What the cached tensors depend on; a training run must agree on every field but ``model``."""

    max_area: int  # bucket sizing (``BucketSamplerConfig``): it fixes every sample's sizes
    multiple: int
    aspect_tolerance: float
    latent_channels: int
    compression: int  # VAE pixels per latent pixel
    embed_dim: int  # condition width D
    latent_dtype: str  # "float32" or "bfloat16"
    vae_digest: str  # ``module_digest`` of the VAE the latents came from
    model: str = ""  # where the model came from, for people reading the manifest

    def mismatches(self, other: "CacheSpec") -> list[str]:
        """Fields (except ``model``) whose values differ, as readable strings."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: cache {mine[k]!r} vs run {theirs[k]!r}" for k in mine if k != "model" and mine[k] != theirs[k]]


@dataclass(frozen=True)
class CachedSample:
    """Everything a sample contributes to training that the cache stores."""

    id: str
    dims: BucketDims
    target: torch.Tensor  # [C, H/f, W/f] normalised latents
    sources: tuple[torch.Tensor, ...]  # each [C, h_k/f, w_k/f], original order
    conds: Mapping[str, torch.Tensor] = field(default_factory=dict)  # "en"/"cn" -> [L, D]


def _dims_json(dims: BucketDims) -> dict[str, Any]:
    return {"target": list(dims.target), "sources": [list(d) for d in dims.sources]}


def _dims_from_json(data: Mapping[str, Any]) -> BucketDims:
    return BucketDims(tuple(Dims(*d) for d in data["sources"]), Dims(*data["target"]))


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


class CacheWriter:
    """Collects samples of one rank and writes them as shards of ``shard_size`` samples (atomically)."""

    def __init__(self, root: str | os.PathLike, spec: CacheSpec, *, rank: int = 0, shard_size: int = 256) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root, self.spec, self.rank, self.shard_size = Path(root), spec, rank, shard_size
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._pending: list[CachedSample] = []
        self._next_shard = 1 + max((n for r, n in _shard_numbers(self.root) if r == rank), default=-1)
        self.written = 0

    @staticmethod
    def write_manifest(root: str | os.PathLike, spec: CacheSpec) -> None:
        """Create ``manifest.json``, or check that an existing one has the same spec (rerun / resume)."""
        path = Path(root) / MANIFEST
        if path.exists():
            existing = LatentCache.read_spec(Path(root))
            problems = existing.mismatches(spec)
            if problems:
                raise CacheError(f"{root}: the cache there was made with other settings ({'; '.join(problems)}); "
                                 "use another folder or delete it")
            return
        Path(root).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, {"format": CACHE_FORMAT, "version": CACHE_VERSION, "spec": asdict(spec)})

    @staticmethod
    def write_null(root: str | os.PathLike, embeds: torch.Tensor, *, overwrite: bool = True) -> None:
        """Store the null condition ``[L0, D]`` (the empty prompt, no images)."""
        if embeds.ndim != 2:
            raise ValueError(f"null embedding must be [L, D], got {tuple(embeds.shape)}")
        write_safetensors(Path(root) / NULL_FILE, {"embeds": embeds.detach().cpu().contiguous()},
                          metadata={"format": "pt"}, overwrite=overwrite)

    def add(self, sample: CachedSample) -> None:
        self._pending.append(sample)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        """Write the pending samples as one shard; returns its path (None when nothing was pending)."""
        if not self._pending:
            return None
        dtype = getattr(torch, self.spec.latent_dtype)
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for i, s in enumerate(self._pending):
            tensors[f"{i}.target"] = s.target.detach().to("cpu", dtype).contiguous()
            for k, src in enumerate(s.sources):
                tensors[f"{i}.source{k}"] = src.detach().to("cpu", dtype).contiguous()
            for lang, emb in s.conds.items():
                tensors[f"{i}.cond.{lang}"] = emb.detach().cpu().contiguous()
            entries.append({"id": s.id, "dims": _dims_json(s.dims), "langs": sorted(s.conds)})
        path = self.root / SHARD_DIR / f"r{self.rank:03d}-{self._next_shard:05d}.safetensors"
        write_safetensors(path, tensors, metadata={"format": "pt", "samples": json.dumps(entries)})
        log.info("cache: wrote %s (%d samples)", path.name, len(entries))
        self.written += len(entries)
        self._next_shard += 1
        self._pending = []
        return path


def _shard_numbers(root: Path) -> Iterable[tuple[int, int]]:
    folder = root / SHARD_DIR
    if not folder.is_dir():
        return []
    return [(int(m[1]), int(m[2])) for p in folder.iterdir() if (m := _SHARD_NAME.match(p.name))]


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


class LatentCache:
    """Read access to a cache folder: ``cache[id]`` -> ``CachedSample``; ``null_embeds`` -> ``[L0, D]``.

    The id index is rebuilt from the shard headers when the cache is opened. File handles are opened lazily and
    per process, so DataLoader workers (forked after opening) never share a file offset.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.spec = self.read_spec(self.root)
        self._index: dict[str, tuple[Path, int, Mapping[str, Any]]] = {}
        for path in sorted((self.root / SHARD_DIR).glob("r*-*.safetensors")):
            if not _SHARD_NAME.match(path.name):
                continue
            try:
                entries = json.loads(read_metadata(path).get("samples", "[]"))
            except (json.JSONDecodeError, ValueError) as exc:
                raise CacheError(f"{path}: damaged cache shard ({exc}); delete it and rerun firered cache") from exc
            for i, entry in enumerate(entries):
                self._index[str(entry["id"])] = (path, i, entry)
        self._sources: dict[Path, WeightSource] = {}
        self._pid = os.getpid()
        log.info("cache %s: %d samples in %d shards", self.root, len(self._index),
                 len({p for p, _, _ in self._index.values()}))

    @staticmethod
    def read_spec(root: Path) -> CacheSpec:
        path = root / MANIFEST
        if not path.is_file():
            raise CacheError(f"{root}: not a training cache (no {MANIFEST}); create one with 'firered cache'")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path}: not valid JSON: {exc}") from exc
        if data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
            raise CacheError(f"{path}: format {data.get('format')!r} v{data.get('version')} is not "
                             f"{CACHE_FORMAT!r} v{CACHE_VERSION}")
        return CacheSpec(**data["spec"])

    def check(self, spec: CacheSpec) -> None:
        """Raise ``CacheError`` if this run's settings differ from those the cache was made with."""
        problems = self.spec.mismatches(spec)
        if problems:
            raise CacheError(f"{self.root}: cache made with other settings than this run: {'; '.join(problems)}. "
                             "Rebuild it with 'firered cache' and this config")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    def ids(self) -> list[str]:
        return list(self._index)

    def _source(self, path: Path) -> WeightSource:
        if os.getpid() != self._pid:  # a forked worker: handles of the parent must not be shared
            self._sources, self._pid = {}, os.getpid()
        src = self._sources.get(path)
        if src is None:
            src = self._sources[path] = open_weights(path)
        return src

    def __getitem__(self, sample_id: str) -> CachedSample:
        try:
            path, i, entry = self._index[sample_id]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in the cache {self.root}") from None
        src = self._source(path)
        dims = _dims_from_json(entry["dims"])
        return CachedSample(
            id=sample_id, dims=dims, target=src.get(f"{i}.target"),
            sources=tuple(src.get(f"{i}.source{k}") for k in range(len(dims.sources))),
            conds={lang: src.get(f"{i}.cond.{lang}") for lang in entry["langs"]})

    def dims(self, sample_id: str) -> BucketDims:
        """The bucket sizes a sample was cached at (no tensor data read)."""
        return _dims_from_json(self._index[sample_id][2]["dims"])

    @property
    def null_embeds(self) -> torch.Tensor:
        path = self.root / NULL_FILE
        if not path.is_file():
            raise CacheError(f"{path}: missing; the cache is incomplete (rerun firered cache)")
        return self._source(path).get("embeds")

    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        self._sources = {}

    def __getstate__(self) -> dict[str, Any]:
        # open files do not pickle (spawned DataLoader workers): the copy reopens them on first use
        return {**self.__dict__, "_sources": {}}
