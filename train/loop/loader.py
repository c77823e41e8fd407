"""Feeding the training loop: bucket-sampler plans -> batches, in DataLoader workers when asked to.

The bucket sampler (in the main process) plans each step; ``StepDataset[plan]`` does the expensive part for one
rank's share of that step, so it can run in ``data.num_workers`` DataLoader worker processes ahead of the loop:

* online: decode + fit + SIA -> ``pixels.PixelBatch`` (the VAE and encoder then run in the main process, on the
  training device);
* cached: read latents and embeddings from the cache -> a finished ``batch.TrainBatch``;
* preference pairs (``losers`` given, DPO): winners as in the online case plus each loser fitted to the winner's
  size -> ``data.pairs.PairPixelBatch``.

The DataLoader keeps the plan order (workers hand batches back in sequence), so the batches are a function of the
sampler state alone; with prefetching the sampler runs ahead of training, which is why checkpoints store
``sampler.state_dict(next_step=<first step not trained on>)``.

Skipped samples. Workers cannot add to the main process's ``SkipLog``; each loaded step carries the skips it saw
(``LoadedStep.skipped``, plain tuples so they pickle) and the loop counts them: a step that a worker could not load
at all still comes back (empty) with its skips, so no count is lost, the last step's included.

Public API: ``LoadedStep``, ``StepDataset``, ``PlanSequence``, ``make_loader``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

from torch.utils.data import DataLoader, Dataset, Sampler

from .batch import TrainBatch, load_cached_batch
from ..cache.store import LatentCache
from ..data.bucket_sampler import BatchPlan, BucketBatchSampler
from ..data.pairs import PairPixelBatch, load_pair_batch
from ..data.record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..data.sia import SIAConfig
from ..data.skips import SkipLog
from ..data.pixels import PixelBatch, load_pixel_batch

log = logging.getLogger(__name__)

__all__ = ["LoadedStep", "StepDataset", "PlanSequence", "make_loader"]


@dataclass(frozen=True)
class LoadedStep:
    """One rank's loaded step and the samples it had to skip, as ``(reason, id, detail)``."""

    batch: PixelBatch | TrainBatch | PairPixelBatch
    skipped: tuple[tuple[str, str, str], ...] = ()

    def add_skips_to(self, skips: SkipLog) -> None:
        for reason, sample_id, detail in self.skipped:
            skips.add(BadSampleError(SkipReason(reason), sample_id, detail))


class _Recorder(SkipLog):
    """A SkipLog that only remembers (the main process logs the skips when it counts them)."""

    def __init__(self) -> None:
        super().__init__(warn_limit=0)
        self.events: list[tuple[str, str, str]] = []

    def add(self, error: BadSampleError) -> None:
        self.events.append((error.reason.value, error.sample_id, error.detail))


class StepDataset(Dataset):
    """``dataset[plan]`` -> ``LoadedStep`` for this rank (see the module docstring)."""

    def __init__(self, records: Sequence[EditRecord], sia: SIAConfig, cache: LatentCache | None = None,
                 losers: Sequence[ImageRef] | None = None) -> None:
        if cache is not None and losers is not None:
            raise ValueError("StepDataset: preference pairs (losers) are encoded online, not read from a cache")
        self.records, self.sia, self.cache, self.losers = records, sia, cache, losers

    def __getitem__(self, plan: BatchPlan) -> LoadedStep:  # type: ignore[override]
        recorder = _Recorder()
        batch: PixelBatch | TrainBatch | PairPixelBatch
        if self.losers is not None:
            batch = load_pair_batch(self.records, self.losers, plan, self.sia, recorder)
        elif self.cache is not None:
            batch = load_cached_batch(self.records, plan, self.cache, self.sia, recorder)
        else:
            batch = load_pixel_batch(self.records, plan, self.sia, recorder)
        return LoadedStep(batch, tuple(recorder.events))

    def __len__(self) -> int:  # plans are endless; the sampler below decides how many are drawn
        return len(self.records)


class PlanSequence(Sampler):
    """The next ``count`` plans of a bucket sampler, as the DataLoader's index sampler."""

    def __init__(self, sampler: BucketBatchSampler, count: int) -> None:
        self.sampler, self.count = sampler, count

    def __iter__(self) -> Iterator[BatchPlan]:
        for _ in range(self.count):
            yield self.sampler.next_plan()

    def __len__(self) -> int:
        return self.count


def _identity(item: LoadedStep) -> LoadedStep:
    return item


def make_loader(dataset: StepDataset, sampler: BucketBatchSampler, count: int, num_workers: int) -> DataLoader:
    """A DataLoader yielding ``count`` ``LoadedStep`` values in plan order."""
    return DataLoader(dataset, sampler=PlanSequence(sampler, count), batch_size=None, collate_fn=_identity,
                      num_workers=num_workers, persistent_workers=False,
                      prefetch_factor=2 if num_workers > 0 else None)
