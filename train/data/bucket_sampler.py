"""The Multi-Condition Aware Bucket Sampler: which samples form each step's batch, and at what sizes.

FireRed trains on a mix of tasks with 0-3 source images of any aspect. A batch must be one tensor per image slot,
and under DDP/FSDP every rank must run the same shapes in a step. The sampler guarantees both:

1. Buckets. Samples are grouped by ``BucketKey`` = (task, aspect of each source, aspect of the target), aspects
   clamped to [1/4, 4] and rounded to 0.1 (``buckets.py``). Each bucket gets one size per slot and a batch size
   from the per-device token budget: ``batch = floor(token_budget / sum_i ceil(h_i w_i / 16^2))``, at least 1,
   at most ``max_batch_size`` and at most the bucket's per-rank share. Only sizes are used: nothing is decoded.
2. A step. An RNG seeded by (seed, global step) -- the same on every rank -- draws, in order: the number of
   source images from ``source_count_weights``; the task from ``task_weights`` among the tasks that have buckets
   with that many sources (``None``: proportional to their sample counts); and the bucket among that task's
   buckets with that count, proportional to their sizes. So every rank picks the same bucket and therefore the
   same shapes and batch size, and the mix follows the weights exactly in expectation (``step_mix()``; logged
   when the sampler is built).
3. Rank shards. Each bucket is a shuffled list (RNG seeded by (seed, bucket, bucket epoch), the same on every rank)
   cut to a multiple of ``world_size``; rank r owns the elements ``r::world_size``. Ranks never share a sample.
   Each visit of a bucket hands out the next ``batch`` samples of the rank's share; when fewer than ``batch`` are
   left, the bucket starts its next epoch with a new shuffle (the few left-over samples return next epoch).
4. Resume. The state is the global step plus each bucket's (epoch, cursor) -- identical on every rank.
   ``state_dict(next_step=s)`` returns the state as it was before step ``s`` was planned, for any of the last
   ``history`` steps, so a DataLoader that prefetched ahead of the training loop still resumes exactly at the
   first step the model did not train on. ``load_state_dict`` refuses a state made with other data or settings.

The sampler is an endless iterator of ``BatchPlan``; the training loop decides how many steps to run.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .buckets import BucketDims, BucketKey, HasSizes, bucket_dims, bucket_key

log = logging.getLogger(__name__)

_STEP_STREAM = 1  # RNG stream ids: keep the step draws and the bucket shuffles independent
_SHUFFLE_STREAM = 2


@dataclass(frozen=True)
class BucketSamplerConfig:
    """Settings of the bucket sampler; FireRed's released defaults where they are known."""

    # Weight of each number of source images per step; FireRed's example is 0:1, 1:1, 2:1, 3:0.
    source_count_weights: Mapping[int, float] = field(default_factory=lambda: {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0})
    # Weight of each task (data set); tasks not listed are not trained on. None: weight = number of samples.
    task_weights: Mapping[str, float] | None = None
    token_budget: int = 16384  # latent tokens per device and step: 4 images of 1024^2, or 16 of 512^2
    max_area: int = 1024 * 1024  # pixel area cap per image: the stage resolution squared
    multiple: int = 16  # side multiple of bucket sizes; 16 = one token, 32 matches the inference sizing rule
    pixels_per_token: int = 16  # VAE 8x times patch 2
    aspect_tolerance: float = 0.02  # max relative aspect change of a bucket size, i.e. max crop fraction
    max_batch_size: int | None = None  # cap for buckets of small images
    seed: int = 0
    history: int = 1024  # past steps whose state ``state_dict(next_step=...)`` can still return

    def __post_init__(self) -> None:
        if self.multiple % self.pixels_per_token:
            raise ValueError(f"multiple {self.multiple} must be a multiple of pixels_per_token {self.pixels_per_token}")
        for name, weights in (("source_count_weights", self.source_count_weights),
                              ("task_weights", self.task_weights or {})):
            if any(w < 0 for w in weights.values()):
                raise ValueError(f"{name} must not be negative: {dict(weights)}")
        if not any(w > 0 for w in self.source_count_weights.values()):
            raise ValueError("source_count_weights needs at least one positive weight")
        if self.token_budget <= 0 or self.max_area <= 0:
            raise ValueError("token_budget and max_area must be positive")


@dataclass(frozen=True)
class BatchPlan:
    """One step's batch on this rank: which samples, and the size of every image slot."""

    step: int
    key: BucketKey
    dims: BucketDims
    indices: tuple[int, ...]  # positions in the sample sequence the sampler was built on
    bucket_epoch: int

    def requests(self) -> list[tuple[int, BatchPlan]]:
        """``(index, plan)`` per sample: what a map-style Dataset needs to load each at the planned sizes."""
        return [(i, self) for i in self.indices]


@dataclass(frozen=True, eq=False)
class _Bucket:
    key: BucketKey
    dims: BucketDims
    members: np.ndarray  # sample indices, ascending
    share: int  # samples per rank per bucket epoch
    batch_size: int


def _draw(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """Index drawn with probability proportional to ``weights`` (one uniform draw: cheap and reproducible)."""
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


class BucketBatchSampler:
    """Endless iterator of ``BatchPlan`` for one rank; see the module docstring."""

    def __init__(self, samples: Sequence[HasSizes], config: BucketSamplerConfig = BucketSamplerConfig(),
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.buckets = self._make_buckets(samples)
        self._choices = self._make_choices()
        self._fingerprint = self._make_fingerprint()
        self._step = 0
        self._epochs = [0] * len(self.buckets)
        self._cursors = [0] * len(self.buckets)
        self._undo: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=config.history)
        self._shard_cache: dict[int, tuple[int, np.ndarray]] = {}
        log.info("bucket sampler: expected share of the steps by (sources, task): %s",
                 ", ".join(f"{n}/{task} {100 * p:.1f}%" for (n, task), p in self.step_mix().items()))

    # ---------------------------------------------------------------- construction
    def _make_buckets(self, samples: Sequence[HasSizes]) -> list[_Bucket]:
        groups: dict[BucketKey, list[int]] = collections.defaultdict(list)
        for index, sample in enumerate(samples):
            groups[bucket_key(sample)].append(index)
        cfg, buckets = self.config, []
        for key in sorted(groups):
            members = groups[key]
            share = len(members) // self.world_size
            if share == 0:
                log.info("bucket %s has %d samples for %d ranks: left out", key.as_tuple(), len(members),
                         self.world_size)
                continue
            dims = bucket_dims(key, [samples[i] for i in members], cfg.max_area, cfg.multiple, cfg.aspect_tolerance)
            tokens = dims.tokens(cfg.pixels_per_token)
            batch = max(1, min(cfg.token_budget // tokens, share, cfg.max_batch_size or share))
            if tokens > cfg.token_budget:
                log.warning("bucket %s needs %d tokens per sample, over the budget of %d: batch size 1",
                            key.as_tuple(), tokens, cfg.token_budget)
            buckets.append(_Bucket(key, dims, np.asarray(members, dtype=np.int64), share, batch))
        return buckets

    def _make_choices(self) -> dict[int, tuple[list[str], list[float], dict[str, list[int]]]]:
        """source count -> (tasks, task weights, task -> bucket ids), only where something can be drawn."""
        by_count: dict[int, dict[str, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(list))
        for b, bucket in enumerate(self.buckets):
            by_count[bucket.key.n_sources][bucket.key.task].append(b)
        choices = {}
        for count in sorted(self.config.source_count_weights):
            if self.config.source_count_weights[count] <= 0:
                continue
            tasks = sorted(t for t in by_count.get(count, {}) if self._task_weight(t, by_count[count][t]) > 0)
            if not tasks:
                log.warning("no trainable samples with %d source image(s): that source count is never drawn", count)
                continue
            weights = [self._task_weight(t, by_count[count][t]) for t in tasks]
            choices[count] = (tasks, weights, {t: by_count[count][t] for t in tasks})
        unknown = set(self.config.task_weights or {}) - {b.key.task for b in self.buckets}
        if unknown:
            log.warning("task_weights name tasks without trainable samples: %s", sorted(unknown))
        if not choices:
            raise ValueError("the bucket sampler has nothing to draw: no samples match the source count and task "
                             "weights (or every bucket has fewer samples than ranks)")
        return choices

    def _task_weight(self, task: str, bucket_ids: list[int]) -> float:
        if self.config.task_weights is None:
            return float(sum(self.buckets[b].share for b in bucket_ids))
        return float(self.config.task_weights.get(task, 0.0))

    def _make_fingerprint(self) -> str:
        """Digest of everything a saved state depends on (not the rank: the state is the same on all ranks)."""
        cfg = self.config
        desc = [cfg.seed, self.world_size, sorted(cfg.source_count_weights.items()),
                sorted((cfg.task_weights or {}).items()), cfg.token_budget, cfg.max_area, cfg.multiple,
                [[list(b.key.as_tuple()), len(b.members), int(b.members.sum()), b.batch_size] for b in self.buckets]]
        return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]

    def step_mix(self) -> dict[tuple[int, str], float]:
        """(source count, task) -> the share of steps drawn from it in expectation: the mix the weights give, so
        a config's effect (e.g. a task left out because a ``task_weights`` mapping does not list it) is visible
        before training."""
        counts = sorted(self._choices)
        count_total = sum(self.config.source_count_weights[c] for c in counts)
        mix = {}
        for count in counts:
            tasks, weights, _ = self._choices[count]
            for task, weight in zip(tasks, weights):
                mix[(count, task)] = self.config.source_count_weights[count] / count_total * weight / sum(weights)
        return mix

    # ---------------------------------------------------------------- planning
    def draw_bucket(self, step: int) -> int:
        """The bucket of ``step``: a function of (seed, step) only, hence the same on every rank."""
        rng = np.random.default_rng([self.config.seed, _STEP_STREAM, step])
        counts = sorted(self._choices)
        count = counts[_draw(rng, [self.config.source_count_weights[c] for c in counts])]
        tasks, task_weights, bucket_ids = self._choices[count]
        ids = bucket_ids[tasks[_draw(rng, task_weights)]]
        return ids[_draw(rng, [self.buckets[b].share for b in ids])]

    def _rank_share(self, b: int, epoch: int) -> np.ndarray:
        cached = self._shard_cache.get(b)
        if cached is None or cached[0] != epoch:
            bucket = self.buckets[b]
            rng = np.random.default_rng([self.config.seed, _SHUFFLE_STREAM, b, epoch])
            order = bucket.members[rng.permutation(len(bucket.members))][: bucket.share * self.world_size]
            cached = (epoch, order[self.rank::self.world_size])
            self._shard_cache[b] = cached
        return cached[1]

    def next_plan(self) -> BatchPlan:
        """Plan the next global step for this rank."""
        step, b = self._step, self.draw_bucket(self._step)
        bucket = self.buckets[b]
        epoch, cursor = self._epochs[b], self._cursors[b]
        self._undo.append((step, b, epoch, cursor))
        if cursor + bucket.batch_size > bucket.share:
            epoch, cursor = epoch + 1, 0
        indices = self._rank_share(b, epoch)[cursor: cursor + bucket.batch_size]
        self._epochs[b], self._cursors[b] = epoch, cursor + bucket.batch_size
        self._step += 1
        return BatchPlan(step, bucket.key, bucket.dims, tuple(int(i) for i in indices), epoch)

    def __iter__(self) -> Iterator[BatchPlan]:
        while True:
            yield self.next_plan()

    @property
    def step(self) -> int:
        """The global step the next plan is for."""
        return self._step

    # ---------------------------------------------------------------- state
    def state_dict(self, next_step: int | None = None) -> dict[str, Any]:
        """The state that plans ``next_step`` next (default: the current one); see the module docstring."""
        if next_step is None:
            next_step = self._step
        oldest = self._undo[0][0] if self._undo else self._step
        if not oldest <= next_step <= self._step:
            raise ValueError(f"state of step {next_step} is not kept: steps {oldest}..{self._step} are")
        epochs, cursors = list(self._epochs), list(self._cursors)
        for step, b, epoch, cursor in reversed(self._undo):
            if step < next_step:
                break
            epochs[b], cursors[b] = epoch, cursor
        return {"fingerprint": self._fingerprint, "step": next_step, "epochs": epochs, "cursors": cursors}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where ``state`` was taken."""
        if state["fingerprint"] != self._fingerprint:
            raise ValueError("bucket sampler state was saved with other data, world size or sampler settings "
                             f"(fingerprint {state['fingerprint']} != {self._fingerprint})")
        self._step = int(state["step"])
        self._epochs = [int(e) for e in state["epochs"]]
        self._cursors = [int(c) for c in state["cursors"]]
        self._undo.clear()
