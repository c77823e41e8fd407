"""Streaming sharded corpora: split across ranks and DataLoader workers, resumable mid-epoch.

Large corpora live in shards (tar files in WebDataset layout, parquet files) that are read front to back, never
indexed. ``ShardStream`` is the ``torch.utils.data.IterableDataset`` that reads them; a shard format is just a
``ShardReader`` function (see ``webdataset.py`` and ``parquet.py``).

Splitting. Every epoch has one shard order, the same on every rank: the sorted shard list, permuted with an RNG
seeded by (seed, epoch) when ``shuffle_shards`` is on. Each (rank, worker) pair is one of
``G = world_size * num_workers`` readers with global id ``g = rank * num_workers + worker`` and reads the shards
``order[g::G]``. So no shard is read twice and every shard is read once per epoch; with fewer shards than
readers, some readers get none (a warning says so; write more, smaller shards). Within a shard the order is the
order it was written in: shuffle the corpus when writing shards.

Resuming. Every sample comes out as a ``StreamItem`` with its ``StreamPosition`` (shard, index in shard, epoch,
worker, the worker's skip counters), and every reader ends its epoch with one ``StreamEnd`` (no sample: its final
skip counters). The training loop hands each item it receives back with ``observe`` (and skips the ``StreamEnd``
items); the stream object in the main process then knows, per shard, how many samples have been consumed and which
shards are finished (a reader reads its shards one after the other, so an item from its k-th shard finishes the
ones before, and its ``StreamEnd`` all of them), and ``state_dict()`` is ``{epoch, positions: {shard: next index},
finished, next_worker, num_workers, skips}``. Loading it into a fresh stream continues every shard at its next
sample and does not reopen finished shards (their trailing bad samples are not counted twice). With several
DataLoader workers the state also records which worker was due next, and the workers' roles are rotated on resume,
so the DataLoader's round-robin yields exactly the sequence the interrupted run would have yielded (same world size
and worker count; with another worker count each shard still resumes at its exact position, only the interleaving
differs). A rank's state covers the shards that rank read; ``merge_stream_states`` combines all ranks' states to
resume with another world size. Use ``persistent_workers=False``: workers copy the stream's position when their
iterator starts.

Bad samples are skipped and counted by the reader in the worker; their counters travel with the positions, and
with the reader's ``StreamEnd`` for skips after its last good sample (bad samples at the end of its last shard, a
reader whose shards were all bad), so ``stream.skip_counts()`` in the main process sees all of them once the
epoch's items are observed. A shard that cannot be read at all counts as one skip (id = the shard name) and the
worker moves on to its next shard.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..record import BadSampleError, EditRecord
from ..skips import SkipLog

log = logging.getLogger(__name__)

# (shard path, first sample index to yield, skip log) -> (index in shard, record) for each good sample from
# that index on. Bad samples are counted in the skip log and not yielded; a shard that cannot be read raises
# BadSampleError.
ShardReader = Callable[[Path, int, SkipLog], Iterator[tuple[int, EditRecord]]]


@dataclass(frozen=True)
class StreamConfig:
    """Who reads what: this process's rank among ``world_size``, and the shard shuffling."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle_shards: bool = True  # a new shard order every epoch (the same on all ranks)
    warn_limit: int = 100  # per worker: skipped samples logged at WARNING before switching to DEBUG

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")


@dataclass(frozen=True)
class StreamPosition:
    """Where an item came from; what ``ShardStream.observe`` needs to resume after it."""

    shard: str
    index: int
    epoch: int
    worker: int  # logical worker id (after the resume rotation)
    num_workers: int
    skip_counts: tuple[tuple[str, int], ...]  # this worker's counters in this epoch so far


@dataclass(frozen=True)
class StreamItem:
    """A record (or what ``transform`` made of it) and its position."""

    value: Any
    position: StreamPosition


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a reader (rank, worker) in an epoch: no sample, its final skip counters."""

    epoch: int
    worker: int  # logical worker id (after the resume rotation)
    num_workers: int
    skip_counts: tuple[tuple[str, int], ...]  # this worker's counters for the whole epoch


def _shard_names(shards: Sequence[Path]) -> list[str]:
    """Names relative to the shards' common folder, so a state survives moving the corpus."""
    if len(shards) == 1:
        return [shards[0].name]
    common = Path(os.path.commonpath([str(p.resolve()) for p in shards]))
    return [p.resolve().relative_to(common).as_posix() for p in shards]


def merge_stream_states(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine the states of all ranks (same epoch) into one that any world size can resume from."""
    states = list(states)
    epochs = {int(s["epoch"]) for s in states}
    if len(epochs) != 1:
        raise ValueError(f"cannot merge stream states of different epochs: {sorted(epochs)}")
    positions: dict[str, int] = {}
    finished: set[str] = set()
    skips: dict[str, int] = {}
    for state in states:
        finished.update(state.get("finished", ()))
        for shard, index in state["positions"].items():
            positions[shard] = max(positions.get(shard, 0), int(index))
        for reason, n in state["skips"].items():
            skips[reason] = skips.get(reason, 0) + int(n)
    # The worker rotation is per rank and meaningless after a merge.
    return {"epoch": epochs.pop(), "positions": positions, "finished": sorted(finished), "next_worker": 0,
            "num_workers": 0, "skips": skips}


class ShardStream(IterableDataset):
    """Items of a sharded corpus for this rank and the current DataLoader worker; see the module docstring."""

    def __init__(self, shards: Sequence[str | Path], reader: ShardReader, config: StreamConfig = StreamConfig(),
                 transform: Callable[[EditRecord], Any] | None = None) -> None:
        paths = sorted(Path(s) for s in shards)
        if not paths:
            raise ValueError("ShardStream needs at least one shard")
        self.paths = paths
        self.names = _shard_names(paths)
        self.reader = reader
        self.config = config
        self.transform = transform  # runs in the worker; may raise BadSampleError to skip the sample
        self.epoch = 0
        self._positions: dict[str, int] = {}
        self._finished: set[str] = set()  # shards read to the end in this epoch
        self._resume_worker = 0
        self._resume_num_workers = 0
        self._base_skips: dict[str, int] = {}
        self._worker_skips: dict[int, dict[str, int]] = {}
        self._last_worker: tuple[int, int] | None = None  # (worker, num_workers) of the last observed item
        self._orders: dict[int, list[int]] = {}  # shard_order of the latest epoch asked for

    # ---------------------------------------------------------------- assignment
    def shard_order(self, epoch: int) -> list[int]:
        """Indices into ``paths`` in this epoch's order (identical on every rank)."""
        if epoch not in self._orders:  # observe() asks for every item
            order = np.arange(len(self.paths))
            if self.config.shuffle_shards:
                order = np.random.default_rng([self.config.seed, epoch]).permutation(order)
            self._orders = {epoch: [int(i) for i in order]}
        return self._orders[epoch]

    def assigned_shards(self, epoch: int, worker: int, num_workers: int) -> list[int]:
        """Shard indices that (this rank, ``worker``) reads in ``epoch``."""
        readers = self.config.world_size * num_workers
        return self.shard_order(epoch)[self.config.rank * num_workers + worker::readers]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (forgets the positions of the previous one)."""
        self.epoch = epoch
        self._positions = {}
        self._finished = set()
        self._resume_worker = self._resume_num_workers = 0
        self._last_worker = None
        self._base_skips = self.skip_counts()
        self._worker_skips = {}

    # ---------------------------------------------------------------- reading (runs in the worker)
    def __iter__(self) -> Iterator[StreamItem | StreamEnd]:
        info = get_worker_info()
        num_workers, physical = (1, 0) if info is None else (info.num_workers, info.id)
        rotation = self._resume_worker if num_workers == self._resume_num_workers else 0
        worker = (physical + rotation) % num_workers
        shards = self.assigned_shards(self.epoch, worker, num_workers)
        if not shards:
            log.warning("rank %d worker %d has no shard to read: %d shards for %d readers", self.config.rank,
                        worker, len(self.paths), self.config.world_size * num_workers)
        skips = SkipLog(warn_limit=self.config.warn_limit)
        for shard in shards:
            if self.names[shard] not in self._finished:
                yield from self._read_shard(shard, worker, num_workers, skips)
        # skips after the last good sample would otherwise never reach the main process
        yield StreamEnd(self.epoch, worker, num_workers, tuple(sorted(skips.counts.items())))

    def _read_shard(self, shard: int, worker: int, num_workers: int, skips: SkipLog) -> Iterator[StreamItem]:
        name = self.names[shard]
        try:
            for index, record in self.reader(self.paths[shard], self._positions.get(name, 0), skips):
                try:
                    value = record if self.transform is None else self.transform(record)
                except BadSampleError as exc:
                    skips.add(exc)
                    continue
                counts = tuple(sorted(skips.counts.items()))
                yield StreamItem(value, StreamPosition(name, index, self.epoch, worker, num_workers, counts))
        except BadSampleError as exc:  # the shard itself is unreadable: count it, go on with the next one
            skips.add(exc)

    # ---------------------------------------------------------------- bookkeeping (main process)
    def observe(self, item: StreamItem | StreamPosition | StreamEnd) -> None:
        """Record that the training loop consumed ``item`` (``StreamEnd`` items too); call once per item, in the
        order received."""
        pos = item.position if isinstance(item, StreamItem) else item
        if pos.epoch != self.epoch:
            raise ValueError(f"item of epoch {pos.epoch} observed while the stream is at epoch {self.epoch}")
        read = [self.names[s] for s in self.assigned_shards(pos.epoch, pos.worker, pos.num_workers)]
        if isinstance(pos, StreamEnd):
            self._finished.update(read)
        else:
            self._positions[pos.shard] = max(self._positions.get(pos.shard, 0), pos.index + 1)
            self._finished.update(read[: read.index(pos.shard)])  # the worker has moved past its earlier shards
        self._worker_skips[pos.worker] = dict(pos.skip_counts)
        self._last_worker = (pos.worker, pos.num_workers)

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason, over this rank's workers (as far as consumed items report them)."""
        total = SkipLog()
        total.merge(self._base_skips)
        for counts in self._worker_skips.values():
            total.merge(counts)
        return dict(total.counts)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this rank's stream at the next unconsumed sample."""
        next_worker, num_workers = self._resume_worker, self._resume_num_workers
        if self._last_worker is not None:
            worker, num_workers = self._last_worker
            next_worker = (worker + 1) % num_workers
        return {"epoch": self.epoch, "positions": dict(self._positions), "finished": sorted(self._finished),
                "next_worker": next_worker, "num_workers": num_workers, "skips": self.skip_counts()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration continues every shard where ``state`` left it."""
        unknown = (set(state["positions"]) | set(state.get("finished", ()))) - set(self.names)
        if unknown:
            raise ValueError(f"stream state names shards this stream does not have: {sorted(unknown)[:5]}")
        self.epoch = int(state["epoch"])
        self._positions = {str(k): int(v) for k, v in state["positions"].items()}
        self._finished = {str(name) for name in state.get("finished", ())}
        self._resume_worker = int(state["next_worker"])
        self._resume_num_workers = int(state["num_workers"])
        self._base_skips = {str(k): int(v) for k, v in state["skips"].items()}
        self._worker_skips = {}
        self._last_worker = None
