"""The offline caching step behind ``firered cache``: encode every sample once, store it (see ``cache``).

For each sample this computes, at the sizes the bucket sampler gives the sample's bucket:

* the target's and every source's normalised VAE latents (posterior mode, as training online would);
* the condition embeddings of its English and/or Chinese instruction against its (bucket-sized) sources, padding
  removed; and, once per cache, the null condition (the empty prompt, no images).

Samples of one bucket share sizes, so they are VAE-encoded ``batch_size`` at a time. Work is split across
processes by sample position (``i % world_size == rank``); every rank writes its own shards, rank 0 the manifest
and the null condition. Ids already in the cache are skipped, so an interrupted run continues where it stopped.
Bad samples (a file vanished since listing, an image that no longer decodes) are counted and skipped.

Bucket sizes depend on the whole sample list (each bucket's size is chosen from its members' areas), so a cache
is only valid for the data and sampler sizing it was built with; training checks every sample's stored sizes
against its plan and refuses a mismatch.

Public API: ``sample_dims``, ``make_cache_spec``, ``build_cache``.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from firered_core.progress import ProgressFn

from .store import CachedSample, CacheSpec, CacheWriter, LatentCache, module_digest
from ..data.bucket_sampler import BucketSamplerConfig
from ..data.buckets import BucketDims, bucket_dims, bucket_key
from ..data.record import BadSampleError, EditRecord
from ..data.skips import SkipLog
from ..data.pixels import fit_image, image_to_tensor

log = logging.getLogger(__name__)

__all__ = ["sample_dims", "make_cache_spec", "build_cache"]


def sample_dims(records: Sequence[EditRecord], sampler: BucketSamplerConfig) -> list[BucketDims]:
    """Every record's bucket sizes, computed exactly as ``BucketBatchSampler`` computes them."""
    groups: dict[Any, list[int]] = collections.defaultdict(list)
    for i, record in enumerate(records):
        groups[bucket_key(record)].append(i)
    dims: list[BucketDims | None] = [None] * len(records)
    for key, members in groups.items():
        d = bucket_dims(key, [records[i] for i in members], sampler.max_area, sampler.multiple,
                        sampler.aspect_tolerance)
        for i in members:
            dims[i] = d
    return dims  # type: ignore[return-value]


def make_cache_spec(sampler: BucketSamplerConfig, vae: Any, embed_dim: int, *, latent_dtype: str = "float32",
                    model: str = "") -> CacheSpec:
    """The ``CacheSpec`` of a run: sizing settings, latent layout, VAE identity."""
    return CacheSpec(max_area=sampler.max_area, multiple=sampler.multiple, aspect_tolerance=sampler.aspect_tolerance,
                     latent_channels=int(vae.config.z_dim), compression=int(vae.spatial_compression),
                     embed_dim=int(embed_dim), latent_dtype=latent_dtype, vae_digest=module_digest(vae), model=model)


def _conditions(encoder: Any, record: EditRecord, sources: list[Any]) -> dict[str, torch.Tensor]:
    texts = {lang: text for lang, text in (("en", record.instruction), ("cn", record.instruction_cn)) if text}
    cond = encoder.encode(list(texts.values()), sources)
    return {lang: cond.embeds[row, : int(cond.mask[row].sum())].detach().cpu()
            for row, lang in enumerate(texts)}


@torch.no_grad()
def _encode_chunk(records: Sequence[EditRecord], chunk: list[int], dims: BucketDims, vae: Any, encoder: Any,
                  device: torch.device, vae_dtype: torch.dtype, skips: SkipLog) -> list[CachedSample]:
    loaded = []
    for i in chunk:
        try:
            sources, target = records[i].open_images()
        except BadSampleError as exc:
            skips.add(exc)
            continue
        fitted = [fit_image(img, d) for img, d in zip(sources, dims.sources)]
        loaded.append((records[i], fitted, fit_image(target, dims.target)))
    if not loaded:
        return []

    def latents(images: list[Any]) -> torch.Tensor:
        pixels = torch.stack([image_to_tensor(im) for im in images]).to(device=device, dtype=vae_dtype)
        return vae.encode(pixels).float().cpu()  # [B, C, h, w]

    targets = latents([t for _, _, t in loaded])
    sources = [latents([f[k] for _, f, _ in loaded]) for k in range(len(dims.sources))]
    return [CachedSample(id=record.id, dims=dims, target=targets[j], sources=tuple(s[j] for s in sources),
                         conds=_conditions(encoder, record, fitted))
            for j, (record, fitted, _) in enumerate(loaded)]


def build_cache(records: Sequence[EditRecord], root: str | Path, spec: CacheSpec, *, vae: Any, encoder: Any,
                sampler: BucketSamplerConfig, rank: int = 0, world_size: int = 1, batch_size: int = 8,
                shard_size: int = 256, device: torch.device | str = "cpu", vae_dtype: torch.dtype = torch.float32,
                barrier: Callable[[], None] = lambda: None, progress: ProgressFn | None = None,
                skips: SkipLog | None = None) -> int:
    """Cache this rank's share of ``records`` into ``root``; returns the number of samples written."""
    root, device, skips = Path(root), torch.device(device), skips if skips is not None else SkipLog()
    if rank == 0:
        CacheWriter.write_manifest(root, spec)
        if not (root / "null.safetensors").is_file():
            null = encoder.encode([""], [])
            CacheWriter.write_null(root, null.embeds[0, : int(null.mask[0].sum())])
    barrier()  # the other ranks read the manifest rank 0 has just written
    done = set(LatentCache(root).ids())
    dims = sample_dims(records, sampler)
    mine = [i for i in range(rank, len(records), world_size) if records[i].id not in done]
    log.info("cache rank %d/%d: %d samples to encode (%d already cached)", rank, world_size, len(mine),
             len(range(rank, len(records), world_size)) - len(mine))
    by_dims: dict[BucketDims, list[int]] = collections.defaultdict(list)
    for i in mine:
        by_dims[dims[i]].append(i)
    writer = CacheWriter(root, spec, rank=rank, shard_size=shard_size)
    finished = 0
    for d, members in sorted(by_dims.items(), key=lambda kv: kv[1][0]):
        for start in range(0, len(members), batch_size):
            chunk = members[start: start + batch_size]
            for sample in _encode_chunk(records, chunk, d, vae, encoder, device, vae_dtype, skips):
                writer.add(sample)
            finished += len(chunk)
            if progress is not None:
                progress(finished, len(mine), None)
    writer.flush()
    barrier()
    log.info("cache rank %d: wrote %d samples, skipped %d bad ones", rank, writer.written, skips.total)
    return writer.written
