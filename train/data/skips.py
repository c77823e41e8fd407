"""Counting and logging the samples a run skipped.

A large corpus always has some broken samples (a missing file, an image that does not decode, an empty
instruction). They are skipped, never fatal; ``SkipLog`` is where that is recorded so the trainer can report it:

- ``counts``: skips per ``SkipReason`` value; ``total``: their sum.
- ``recent``: the ids of the last ``keep_ids`` skipped samples with their reason, to find them on disk.
- every skip is logged at WARNING with the sample id and detail, up to ``warn_limit`` of them; after that at
  DEBUG, so a corpus with a million broken rows does not drown the log (the counters keep counting).

``state_dict``/``load_state_dict`` carry the counters through a checkpoint; ``merge`` adds counters that another
process (a DataLoader worker, another rank) collected.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Mapping

from .record import BadSampleError

log = logging.getLogger(__name__)


class SkipLog:
    """Counters and recent ids of skipped samples."""

    def __init__(self, keep_ids: int = 1000, warn_limit: int = 100) -> None:
        self.counts: dict[str, int] = {}
        self.recent: deque[tuple[str, str]] = deque(maxlen=keep_ids)
        self.warn_limit = warn_limit
        self._warned = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, error: BadSampleError) -> None:
        """Count one skipped sample and log it by id."""
        reason = error.reason.value
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.recent.append((error.sample_id, reason))
        if self._warned < self.warn_limit:
            self._warned += 1
            suffix = " (further skips are logged at DEBUG)" if self._warned == self.warn_limit else ""
            log.warning("skipped bad sample %s%s", error, suffix)
        else:
            log.debug("skipped bad sample %s", error)

    def merge(self, counts: Mapping[str, int]) -> None:
        """Add counters collected elsewhere (another worker or rank)."""
        for reason, n in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + int(n)

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}
