"""Stochastic Instruction Alignment (SIA): reorder and drop source images, keep the instruction consistent.

Edit instructions name their inputs by position ("put the hat from Picture 2 on the man in Picture 1"). Trained
only on the order the data came in, a model learns positions instead of reading the references. SIA, applied in
collate, randomly drops and shuffles the source images and rewrites the references of the instruction to the new
order (``references.realign``), removing references to dropped images; it also drops the whole instruction now
and then, so the trainer uses the null (empty-prompt) embedding that classifier-free guidance needs.

Three decisions, each a pure function of its seed so a run (and a resumed run) makes the same ones:

- ``plan_sources(n, config, step)``: which of the ``n`` sources stay and in what order. Seeded by
  (seed, global step), NOT by sample: every sample of a batch and every rank must keep the same number of
  sources with the same slot shapes (the bucket sampler made the k-th sources of a batch one shape), so the plan
  is shared by the whole step. Each source is dropped with ``image_drop_prob`` but at least ``min_sources`` stay;
  with ``shuffle_prob`` the kept ones are permuted.
- ``choose_instruction(record, config, epoch)``: English or Chinese (uniformly among those present), replaced by
  "" with ``text_drop_prob``. Seeded by (seed, sample id, epoch): a per-sample decision that changes shapes of
  nothing.
- ``align(sources, instruction, plan)``: applies a plan to one sample (its images or anything per source, e.g. the
  slot sizes ``BucketDims.sources``) and its instruction.

The report does not give SIA's probabilities; the defaults below are guesses to tune. The text drop rate is the
5% of FireRed's released trainer. SIA changes what the condition encoder sees, so it needs online encoding (or a
cache keyed by the aligned instruction and image order), not a cache of the unaligned sample.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

from .record import EditRecord
from .references import realign

T = TypeVar("T")


@dataclass(frozen=True)
class SIAConfig:
    """Probabilities of Stochastic Instruction Alignment (unknown in the report: tunable guesses)."""

    image_drop_prob: float = 0.1  # per source image and step
    min_sources: int = 1  # never drop below this many sources (an edit should stay an edit)
    shuffle_prob: float = 0.5  # chance that a step's kept sources are permuted
    text_drop_prob: float = 0.05  # chance that a sample's instruction becomes "" (null embedding); FireRed: 5%
    # Chance of the Chinese instruction when a sample has both; None picks either with equal chance.
    cn_prob: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("image_drop_prob", "shuffle_prob", "text_drop_prob") + (("cn_prob",) if self.cn_prob is not None
                                                                             else ()):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SIAConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.min_sources < 0:
            raise ValueError(f"SIAConfig.min_sources must be >= 0, got {self.min_sources}")


def _rng(*key: object) -> random.Random:
    """An RNG that depends only on ``key``, in every process (unlike ``hash()``, which is salted per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class SourcePlan:
    """Which sources a step keeps: ``order[j]`` is the old 0-based index of the new j-th source."""

    order: tuple[int, ...]
    n_original: int

    def __post_init__(self) -> None:
        if len(set(self.order)) != len(self.order) or not all(0 <= i < self.n_original for i in self.order):
            raise ValueError(f"invalid source order {self.order} for {self.n_original} sources")

    @property
    def identity(self) -> bool:
        return self.order == tuple(range(self.n_original))

    def mapping(self) -> dict[int, int | None]:
        """Old 1-based image number -> new 1-based number, or None when dropped (what ``realign`` takes)."""
        new = {old + 1: j + 1 for j, old in enumerate(self.order)}
        return {i: new.get(i) for i in range(1, self.n_original + 1)}

    def apply(self, items: Sequence[T]) -> list[T]:
        """The per-source ``items`` (images, sizes...) in the new order, without the dropped ones."""
        if len(items) != self.n_original:
            raise ValueError(f"plan for {self.n_original} sources applied to {len(items)} items")
        return [items[i] for i in self.order]


def plan_sources(n_sources: int, config: SIAConfig, step: int) -> SourcePlan:
    """The keep/drop and order decision shared by every sample and rank of global step ``step``."""
    rng = _rng(config.seed, "sia-sources", step)
    kept = [i for i in range(n_sources) if rng.random() >= config.image_drop_prob]
    floor = min(config.min_sources, n_sources)
    if len(kept) < floor:
        kept = sorted(rng.sample(range(n_sources), floor))
    if len(kept) > 1 and rng.random() < config.shuffle_prob:
        rng.shuffle(kept)
    return SourcePlan(tuple(kept), n_sources)


def align(sources: Sequence[T], instruction: str, plan: SourcePlan) -> tuple[list[T], str]:
    """One sample's sources and instruction under ``plan``."""
    if plan.identity:
        return list(sources), instruction
    return plan.apply(sources), realign(instruction, plan.mapping(), plan.n_original)


def choose_instruction(record: EditRecord, config: SIAConfig, epoch: int) -> str:
    """The instruction a sample trains with this epoch: EN or CN at random, or "" (text drop)."""
    rng = _rng(config.seed, "sia-text", record.id, epoch)
    if rng.random() < config.text_drop_prob:
        return ""
    if config.cn_prob is not None and record.instruction and record.instruction_cn:
        return record.instruction_cn if rng.random() < config.cn_prob else record.instruction
    options = [t for t in (record.instruction, record.instruction_cn) if t]
    return options[rng.randrange(len(options))] if options else ""
