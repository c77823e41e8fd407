"""How much of a component sits on the device while it runs, and which of its blocks stream: the budget rule.

A component's weights split into its *blocks* (the repeated layers: the transformer's ``transformer_blocks``,
Qwen2.5-VL's ``visual.blocks`` and ``language_model.layers``) and the rest, its *fixed* weights (embeddings,
input/output projections, norms). ``find_blocks`` finds the blocks of any module: every ``ModuleList`` of at least
two children of one class that hold weights, outermost lists only, in registration order (which is the order they
run in for the models here).

The budget rule (``plan_part``), with ``max_vram`` in bytes:

* ``whole``: the component is on the device entirely while it runs (offload ``model``, and ``blocks`` for a
  component that fits the budget);
* ``streamed``: the fixed weights stay on the device; blocks are kept resident in order while they fit, and the
  others are copied in one at a time just before they run. Streaming needs two slots - the block computing and the
  next one being copied - so the peak is ``fixed + resident blocks + the two largest streamed blocks``, and that
  is what must fit. The smallest budget a component can run in is therefore ``fixed + its two largest blocks``
  (its whole size if it has no blocks); a smaller one is refused with a ValueError naming that minimum.

Without a budget, ``blocks`` streams every transformer block and runs the other components whole.

``required_bytes`` gives the smallest budget a whole set of components runs in under each offload mode: all of
them for ``none``, the largest for ``model``, the largest streaming minimum for ``blocks``.

Public API: ``PartPlan``, ``find_blocks``, ``plan_part``, ``minimum_bytes``, ``required_bytes``, ``BudgetError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from .base import format_gb
from .weights import module_bytes, packed_bytes

__all__ = ["PartPlan", "find_blocks", "plan_part", "minimum_bytes", "required_bytes", "BudgetError"]

STREAM_SLOTS = 2  # the block computing + the next one in flight


class BudgetError(ValueError):
    """``max_vram`` is smaller than what a component needs on the device (the message names the minimum)."""


@dataclass(frozen=True)
class PartPlan:
    """What one component keeps on the device while it runs."""

    part: str
    total_bytes: int  # all its weights
    fixed_bytes: int  # weights outside its blocks (the whole component when it has no blocks)
    block_bytes: tuple[int, ...]  # per block, in ``find_blocks`` order, packed as it streams (``packed_bytes``)
    streamed: tuple[int, ...] = ()  # indices of the blocks copied in just in time; () = whole on the device
    blocks: tuple[nn.Module, ...] = field(default=(), repr=False, compare=False)  # the blocks themselves

    @property
    def streamed_blocks(self) -> list[nn.Module]:
        return [self.blocks[i] for i in self.streamed]

    @property
    def resident_blocks(self) -> tuple[int, ...]:
        stream = set(self.streamed)
        return tuple(i for i in range(len(self.block_bytes)) if i not in stream)

    @property
    def slot_bytes(self) -> int:
        """Bytes of the streaming slots: the largest streamed blocks that can be on the device at once."""
        sizes = sorted((self.block_bytes[i] for i in self.streamed), reverse=True)
        return sum(sizes[:STREAM_SLOTS])

    @property
    def peak_bytes(self) -> int:
        """Most weight bytes on the device while the component runs."""
        if not self.streamed:
            return self.total_bytes
        return self.fixed_bytes + sum(self.block_bytes[i] for i in self.resident_blocks) + self.slot_bytes


def find_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated layers of ``module`` (see the module docstring), in order."""
    blocks: list[nn.Module] = []
    taken: set[int] = set()
    for _, sub in module.named_modules():
        if id(sub) in taken or not isinstance(sub, nn.ModuleList) or len(sub) < 2:
            continue
        children = list(sub)
        if len({type(c) for c in children}) != 1 or not all(module_bytes(c) for c in children):
            continue
        blocks.extend(children)
        taken.update(id(m) for c in children for m in c.modules())
    return blocks


def minimum_bytes(fixed: int, block_bytes: tuple[int, ...]) -> int:
    """The smallest budget a component with these sizes runs in (fixed weights + its two largest blocks)."""
    return fixed + sum(sorted(block_bytes, reverse=True)[:STREAM_SLOTS])


def plan_part(part: str, module: nn.Module, max_vram: int | None, stream: bool) -> PartPlan:
    """The plan for ``module`` under ``max_vram`` bytes; ``stream``: it may stream its blocks (offload ``blocks``).

    Raises ``BudgetError`` when even the smallest plan does not fit.
    """
    blocks = find_blocks(module) if stream else []
    block_bytes = tuple(packed_bytes(b) for b in blocks)  # the size they travel in
    total = module_bytes(module)
    fixed = module_bytes(module, skip=blocks) if blocks else total
    whole = PartPlan(part, total, fixed, block_bytes, blocks=tuple(blocks))
    if max_vram is None:
        return _stream_all(whole) if stream and part == "transformer" and blocks else whole
    if total <= max_vram:
        return whole
    if not blocks:
        raise BudgetError(f"max_vram={format_gb(max_vram)} is too small for the {part}: it needs "
                          f"{format_gb(total)} on the device and has no blocks to stream"
                          + ("" if stream else "; offload='blocks' streams the transformer's blocks"))
    need = minimum_bytes(fixed, block_bytes)
    if need > max_vram:
        raise BudgetError(f"max_vram={format_gb(max_vram)} is too small for the {part}: streaming its blocks needs "
                          f"at least {format_gb(need)} (fixed weights {format_gb(fixed)} + two blocks of up to "
                          f"{format_gb(max(block_bytes))})")
    return _fill(whole, max_vram)


def _stream_all(plan: PartPlan) -> PartPlan:
    return dataclasses.replace(plan, streamed=tuple(range(len(plan.block_bytes))))


def _fill(plan: PartPlan, max_vram: int) -> PartPlan:
    """Keep blocks resident in order while fixed + resident + two streaming slots stay within ``max_vram``."""
    n = len(plan.block_bytes)
    for resident in range(n, -1, -1):
        candidate = dataclasses.replace(plan, streamed=tuple(range(resident, n)))
        if candidate.peak_bytes <= max_vram and candidate.streamed:
            return candidate
    raise AssertionError("plan_part checked the minimum before filling")  # pragma: no cover


def required_bytes(mode: str, parts: Mapping[str, nn.Module]) -> tuple[int, str]:
    """``(bytes, who)``: the smallest ``max_vram`` offload ``mode`` runs ``parts`` in, and which part sets it."""
    if mode == "none":
        return sum(module_bytes(m) for m in parts.values()), "all components together"
    needs = {}
    for part, module in parts.items():
        blocks = find_blocks(module) if mode == "blocks" else []
        if blocks:
            needs[part] = min(module_bytes(module), minimum_bytes(module_bytes(module, skip=blocks),
                                                                  tuple(packed_bytes(b) for b in blocks)))
        else:
            needs[part] = module_bytes(module)
    who = max(needs, key=lambda p: needs[p])
    return needs[who], f"the {who}"
