"""The data side of a run: samples, validation samples, the bucket sampler for this rank, the cache, SIA.

``build_train_data(cfg, rank, world_size)`` lists the training samples (``data.records.read_records``), picks the
validation samples, opens the cache when ``data.cache_dir`` is set and builds this rank's
``BucketBatchSampler``. The sampler's pixels-per-token comes from the config (``data.sampler``), which must match
the model (VAE compression x patch; checked by the trainer).

Validation samples (``data.records.validation_records``): ``data.val_path`` read with the same reader, or else the first
``logging.n_val_samples`` training samples (then the "held-out" loss is a training-sample loss; set
``data.val_path`` for a real one). Their ids get a ``val/`` prefix so they never collide with training ids in a
cache; ``firered cache`` stores them too, so a cached run needs no encoder at all. Each is planned alone at its own
bucket sizes (``val_plans``), without SIA randomness: sources in order, no text drop.

Preference pairs (``data.reader: preference``, DPO): the winners are the samples the sampler plans and the losers
ride along (``data.pairs``); the validation samples are winners too (the held-out flow loss of the preferred
results), from ``data.val_path`` (a preference manifest) or the first training pairs.

With a cache, SIA's image drop and shuffle are switched off (a cache holds each sample's condition for its
original source order; see ``cache``); the EN/CN choice and the text drop stay.

Public API: ``TrainData``, ``build_train_data``, ``val_plans``, ``VAL_SIA``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..cache.store import LatentCache
from ..cache.build import sample_dims
from ..config import TrainConfig
from ..data.bucket_sampler import BatchPlan, BucketBatchSampler, BucketSamplerConfig
from ..data.buckets import bucket_key
from ..data.pairs import read_pair_records
from ..data.record import EditRecord, ImageRef
from ..data.sia import SIAConfig
from ..data.skips import SkipLog
from ..data.records import VAL_PREFIX, read_records, validation_records

log = logging.getLogger(__name__)

__all__ = ["TrainData", "build_train_data", "val_plans", "VAL_SIA"]

VAL_SIA = SIAConfig(image_drop_prob=0.0, shuffle_prob=0.0, text_drop_prob=0.0)


@dataclass
class TrainData:
    """Everything the loop needs to draw batches on this rank."""

    records: list[EditRecord]
    val_records: list[EditRecord]
    sampler: BucketBatchSampler
    sia: SIAConfig  # as applied (SIA image drop/shuffle off with a cache)
    cache: LatentCache | None
    skips: SkipLog
    losers: list[ImageRef] | None = None  # preference runs: the loser of records[i] at position i


def val_plans(val_records: list[EditRecord], sampler: BucketSamplerConfig) -> list[BatchPlan]:
    """One single-sample plan per validation record, at the sizes its own bucket gets."""
    dims = sample_dims(val_records, sampler)
    return [BatchPlan(step=0, key=bucket_key(r), dims=d, indices=(i,), bucket_epoch=0)
            for i, (r, d) in enumerate(zip(val_records, dims))]


def _cache_sia(sia: SIAConfig) -> SIAConfig:
    if sia.image_drop_prob or sia.shuffle_prob:
        log.warning("data.cache_dir is set: SIA image drop (%g) and shuffle (%g) are off, a cache holds each "
                    "sample's condition for its original source order; text drop and EN/CN choice stay",
                    sia.image_drop_prob, sia.shuffle_prob)
    return dataclasses.replace(sia, image_drop_prob=0.0, shuffle_prob=0.0)


def build_train_data(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> TrainData:
    """Samples, validation samples, cache and this rank's sampler for ``cfg``."""
    skips = SkipLog()
    losers: list[ImageRef] | None = None
    if cfg.data.reader == "preference":
        records, losers, val = _preference_data(cfg, skips)
    else:
        records = read_records(cfg.data.reader, cfg.data.path, default_task=cfg.data.default_task, skips=skips)
        val = validation_records(records, reader=cfg.data.reader, val_path=cfg.data.val_path,
                                 n_val=cfg.logging.n_val_samples, default_task=cfg.data.default_task, skips=skips)
    if not records:
        raise ValueError(f"data.path {cfg.data.path!r}: no usable training samples ({skips.total} skipped)")
    cache = LatentCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    sia = _cache_sia(cfg.data.sia) if cache is not None else cfg.data.sia
    sampler = BucketBatchSampler(records, cfg.data.sampler, rank=rank, world_size=world_size)
    log.info("data: %d training samples in %d buckets, %d validation samples, %s", len(records),
             len(sampler.buckets), len(val), f"cache {cache.root}" if cache is not None else "online encoding")
    return TrainData(records=records, val_records=val, sampler=sampler, sia=sia, cache=cache, skips=skips,
                     losers=losers)


def _preference_data(cfg: TrainConfig, skips: SkipLog) -> tuple[list[EditRecord], list[ImageRef], list[EditRecord]]:
    """(winner records, their losers, validation winners) of a preference run."""
    pairs = read_pair_records(cfg.data.path, default_task=cfg.data.default_task, skips=skips)
    if cfg.data.val_path:
        val = read_pair_records(cfg.data.val_path, default_task=cfg.data.default_task, skips=skips).records
    else:
        val = pairs.records[:cfg.logging.n_val_samples]
    return pairs.records, pairs.losers, [dataclasses.replace(r, id=VAL_PREFIX + r.id) for r in val]
