"""Placements: where the pipeline computes, and how each component gets onto that device within a memory budget.

The released model is ~57 GB in bf16 (transformer 20.4 B parameters, Qwen2.5-VL 7 B, VAE); graphics cards have
8-24 GB. The pipeline therefore never assumes its weights sit where it computes: it asks a ``Placement`` for the
compute device and wraps each phase (condition encoding, reference encoding, sampling, decoding) in
``placement.use(part, module)``. ``docs/MEMORY.md`` explains the modes, the budget rule and what was measured.

====================  ==========================================================================================
``base.py``           the ``Placement`` protocol, ``ResidentPlacement`` (compute where the weights are), the
                      ``DeviceLedger`` byte count, argument checks
``modes.py``          ``OffloadPlacement``: offload ``none`` / ``model`` / ``blocks`` under ``max_vram``
``plan.py``           the budget rule: blocks of a module, what stays resident, what streams, the minimum budget
``weights.py``        swapping a module's tensors for device copies and back, without touching the host tensors
``streamer.py``       ``BlockStreamer``: blocks copied into two device slots just before they run
``copier.py``         in-line copies, or a side CUDA stream with pinned host memory and events
``tracker.py``        ``DeviceMemoryTracker``: live bytes on a (fake) device, counted op by op
====================  ==========================================================================================
"""

from .base import (GB, OFFLOAD_MODES, PARTS, DeviceLedger, Placement, ResidentPlacement, check_max_vram,
                   check_mode, format_gb, resolve_device)
from .modes import OffloadPlacement
from .plan import BudgetError, PartPlan, find_blocks, plan_part, required_bytes
from .tracker import DeviceMemoryTracker

__all__ = ["Placement", "ResidentPlacement", "OffloadPlacement", "DeviceLedger", "DeviceMemoryTracker",
           "BudgetError", "PartPlan", "find_blocks", "plan_part", "required_bytes", "OFFLOAD_MODES", "PARTS", "GB",
           "format_gb", "check_mode", "check_max_vram", "resolve_device"]
