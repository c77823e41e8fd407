"""Run a component whose blocks do not all fit on the device: each block is copied in just before it runs.

When streaming starts, two device buffers ("slots") are allocated, each the size of the largest streamed block
packed flat (``weights.packed_layout``). A forward pre-hook on every streamed block

1. makes sure the block sits in a slot (its parameters and buffers become views into the slot; the host tensors
   are kept aside),
2. makes the compute stream wait for that block's copy, and
3. starts copying the *next* streamed block into the other slot, once the compute stream is past the block that
   slot held before - so the copy overlaps this block's compute, and no kernel ever reads a half-written slot.

A forward hook (called even when the block raises) puts the block's host tensors back and marks its slot free from
the current point of the compute stream on. After the last streamed block, the first one is fetched for the next
forward (the next sampling step, or the other half of true CFG). Every streamed weight crosses the bus exactly
once per forward.

Device memory for the streamed blocks is the two slots, allocated once and counted in the placement's ledger for
the whole time they exist: the block computing and the one in flight are both inside the budget, and the caching
allocator never sees a per-block allocation.

Blocks that run in another order than expected (a forward interrupted halfway, a model that skips a block) are
handled, never assumed away: a block about to run that is not in a slot is copied in first, evicting what the
other slot held, so the numbers never depend on the schedule.

Public API: ``BlockStreamer``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import torch
from torch import nn

from ..loading.mapped import release
from .base import DeviceLedger, format_gb
from .copier import Copier
from .plan import STREAM_SLOTS
from .weights import packed_layout, set_entry, tensor_nbytes

log = logging.getLogger(__name__)

__all__ = ["BlockStreamer"]


class BlockStreamer:
    """Streams ``blocks`` (in the order they run) through device slots while the context is open."""

    def __init__(self, blocks: Sequence[nn.Module], copier: Copier, ledger: DeviceLedger) -> None:
        if not blocks:
            raise ValueError("BlockStreamer: no blocks to stream")
        self.blocks = list(blocks)
        self.copier = copier
        self.ledger = ledger
        self._layouts = [packed_layout(b) for b in self.blocks]
        self.slot_bytes = max(size for _, _, size in self._layouts)
        n_slots = min(STREAM_SLOTS, len(self.blocks))
        self._slots: list[torch.Tensor] = []
        self._holder: list[int | None] = [None] * n_slots  # block index in each slot
        self._ready: list[Any] = [None] * n_slots  # copy-arrived token of each slot's block
        self._free_after: list[Any] = [None] * n_slots  # computed token of the block a slot held last
        self._handles: list[Any] = []

    # -- context ------------------------------------------------------------------------------------------------

    def __enter__(self) -> "BlockStreamer":
        device = self.copier.device
        self.ledger.add(self.slot_bytes * len(self._holder))  # counted before the memory is taken
        self._slots = [torch.empty(self.slot_bytes, dtype=torch.uint8, device=device) for _ in self._holder]
        # the slots come from the compute stream's pool: memory it may still be reading for an earlier tensor, so
        # the first copy into each waits for the compute stream too
        self._free_after = [self.copier.computed() for _ in self._holder]
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(functools.partial(self._before, index)))
            self._handles.append(block.register_forward_hook(functools.partial(self._after, index),
                                                             always_call=True))
        log.debug("streaming %d blocks through %d slots of %s on %s", len(self.blocks), len(self._slots),
                  format_gb(self.slot_bytes), device)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for slot, holder in enumerate(self._holder):
            if holder is not None:
                self._release(slot)
        self.copier.finish()  # the slots are freed on the compute stream: it must be past every copy into them
        self.ledger.remove(self.slot_bytes * len(self._slots))
        self._slots = []

    # -- hooks --------------------------------------------------------------------------------------------------

    def _before(self, index: int, module: nn.Module, args: Any) -> None:
        slot = self._slot_of(index)
        if slot is None:
            slot = self._fetch(index, keep=None)
        self.copier.wait_copied(self._ready[slot])
        following = (index + 1) % len(self.blocks)
        if following != index and len(self._slots) > 1 and self._slot_of(following) is None:
            self._fetch(following, keep=slot)

    def _after(self, index: int, module: nn.Module, args: Any, output: Any) -> None:
        slot = self._slot_of(index)
        if slot is not None:
            self._free_after[slot] = self.copier.computed()
            self._release(slot)

    # -- slots --------------------------------------------------------------------------------------------------

    def _slot_of(self, index: int) -> int | None:
        for slot, holder in enumerate(self._holder):
            if holder == index:
                return slot
        return None

    def _fetch(self, index: int, keep: int | None) -> int:
        """Copy block ``index`` into a slot other than ``keep`` (an empty one if there is one); returns the slot."""
        candidates = [s for s in range(len(self._slots)) if s != keep]
        slot = next((s for s in candidates if self._holder[s] is None), candidates[0])
        if self._holder[slot] is not None:
            self._release(slot)
        self.copier.copies_wait(self._free_after[slot])
        entries, offsets, _ = self._layouts[index]
        buffer = self._slots[slot]
        written: set[int] = set()
        for (owner, name, is_param, host), offset in zip(entries, offsets):
            view = _view(buffer, offset, host)
            if offset not in written:
                written.add(offset)
                self.copier.copy_into(view, host)
            set_entry(owner, name, is_param, view)
        self._ready[slot] = self.copier.copied()
        # the copies have read the host bytes: pages of file-backed weights go back until the block's next turn
        release(host for *_, host in entries)
        self._holder[slot] = index
        return slot

    def _release(self, slot: int) -> None:
        """Put the host tensors of the block in ``slot`` back; the slot's contents become garbage."""
        index = self._holder[slot]
        entries, _, _ = self._layouts[index]
        for owner, name, is_param, host in entries:
            set_entry(owner, name, is_param, host)
        self._holder[slot] = None


def _view(buffer: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The bytes of ``buffer`` at ``offset`` seen as a contiguous tensor of ``like``'s dtype and shape."""
    return buffer[offset: offset + tensor_nbytes(like)].view(like.dtype).view(like.shape)

