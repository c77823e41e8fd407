"""Preference pairs as the trainer's samples: winners go through the bucket sampler, losers ride along.

A DPO step noises winner and loser of a pair identically, so both need one size. ``pair_records`` turns each
``preference.PreferenceRecord`` into an ``EditRecord`` whose target is the winner (the bucket sampler plans every
step from those, exactly as for a flow run) and keeps the loser's ``ImageRef`` beside it. A pair whose loser falls
in another aspect bucket than its winner is skipped and counted (``SkipReason.MALFORMED``) when the list is built:
fitting it to the winner's size would crop or stretch it, and the loss would then compare another picture.

``load_pair_batch`` loads one rank's share of a planned step: the winner samples as ``pixels.load_pixel_sample``
does (SIA applied once: the pair shares sources and instruction) and each loser decoded and fitted to the winner's
target size. A sample whose winner, sources or loser cannot be read is left out whole and counted, so winner and
loser rows always line up.

Public API: ``PairRecords``, ``pair_records``, ``read_pair_records``, ``PairPixelBatch``, ``load_pair_batch``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from .bucket_sampler import BatchPlan
from .buckets import aspect_bucket
from .pixels import PixelBatch, fit_image, image_to_tensor, load_pixel_sample, stack_pixel_batch
from .preference import PreferenceRecord, read_preferences
from .readers.jsonl import manifest_paths
from .record import BadSampleError, EditRecord, ImageRef, SkipReason
from .sia import SIAConfig, plan_sources
from .skips import SkipLog

log = logging.getLogger(__name__)

__all__ = ["PairRecords", "pair_records", "read_pair_records", "PairPixelBatch", "load_pair_batch"]


@dataclass(frozen=True)
class PairRecords:
    """Winners as edit records (what the sampler plans) and the loser of each, at the same position."""

    records: list[EditRecord]
    losers: list[ImageRef]


def _check_loser(pref: PreferenceRecord) -> None:
    winner, loser = aspect_bucket(pref.winner.width, pref.winner.height), aspect_bucket(pref.loser.width,
                                                                                        pref.loser.height)
    if winner != loser:
        raise BadSampleError(SkipReason.MALFORMED, pref.id,
                             f"loser {pref.loser.name} ({pref.loser.width}x{pref.loser.height}, aspect {loser}) is "
                             f"not in the winner's aspect bucket ({pref.winner.width}x{pref.winner.height}, aspect "
                             f"{winner}); a pair is noised alike at one size: give both the same size")


def pair_records(prefs: Sequence[PreferenceRecord], skips: SkipLog | None = None) -> PairRecords:
    """The trainable pairs of ``prefs`` (see the module docstring); mismatched losers are counted in ``skips``."""
    skips = skips if skips is not None else SkipLog()
    records, losers = [], []
    for pref in prefs:
        try:
            _check_loser(pref)
        except BadSampleError as exc:
            skips.add(exc)
            continue
        records.append(EditRecord(id=pref.id, target=pref.winner, sources=pref.sources,
                                  instruction=pref.instruction, task=pref.task))
        losers.append(pref.loser)
    return PairRecords(records=records, losers=losers)


def read_pair_records(path: str, *, default_task: str = "default", skips: SkipLog | None = None) -> PairRecords:
    """The pairs of a preference manifest, or of every ``*.jsonl`` in a folder (sorted), as ``PairRecords``."""
    if not path:
        raise ValueError("data.path is empty: give a preference .jsonl manifest or a folder of them")
    root = Path(path).expanduser()
    manifests = manifest_paths(root)
    if not manifests:
        raise FileNotFoundError(f"data.path {path!r} has no .jsonl preference manifests")
    prefs = read_preferences(manifests, skips)
    if default_task != "default":  # the manifest's own default is "default"; the config may rename it
        prefs = [p if p.task != "default" else replace(p, task=default_task) for p in prefs]
    return pair_records(prefs, skips)


@dataclass(frozen=True)
class PairPixelBatch:
    """One rank's pairs of one step: the winners as a ``PixelBatch`` and the losers' pixels at its target size."""

    winner: PixelBatch
    loser: torch.Tensor  # [B, 3, H, W] in [-1, 1], row i the loser of winner.samples[i]

    @property
    def size(self) -> int:
        return self.winner.size


def load_pair_batch(records: Sequence[EditRecord], losers: Sequence[ImageRef], plan: BatchPlan, sia: SIAConfig,
                    skips: SkipLog | None = None) -> PairPixelBatch:
    """Every pair of ``plan`` for this rank; a pair with any unreadable image is left out and counted."""
    source_plan = plan_sources(len(plan.dims.sources), sia, plan.step)
    samples, loser_rows = [], []
    for index in plan.indices:
        record = records[index]
        try:
            sample = load_pixel_sample(record, index, plan, source_plan, sia)
            loser = image_to_tensor(fit_image(losers[index].open(record.id), plan.dims.target))
        except BadSampleError as exc:
            (skips if skips is not None else SkipLog()).add(exc)
            continue
        samples.append(sample)
        loser_rows.append(loser)
    winner = stack_pixel_batch(plan, source_plan, samples)
    loser_pixels = torch.stack(loser_rows) if loser_rows else torch.empty_like(winner.target)
    return PairPixelBatch(winner=winner, loser=loser_pixels)
