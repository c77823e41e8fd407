"""The placement interface the pipeline computes through, the resident default, and the byte ledger.

The pipeline never asks a module where it is; it asks its placement. A placement names the device computation
happens on (``device``: latents, activations, the encoder's outputs all go there) and makes a component ready to
compute there for the length of a ``with`` block (``use(part, module)``). Hosts plug in their own (ComfyUI's model
management is one); this package provides ``ResidentPlacement`` (compute where the weights already are, the
pipeline's behaviour before placements existed) and ``modes.OffloadPlacement`` (none / model / blocks).

``DeviceLedger`` is a placement's own count of the weight bytes it has put on the device: what is resident now and
the most that ever was. Tests compare it with an independent count of live device storages.

Sizes are in bytes; messages print GB = 2**30 bytes, the unit graphics cards are sold in.

Public API: ``Placement``, ``ResidentPlacement``, ``DeviceLedger``, ``OFFLOAD_MODES``, ``PARTS``, ``GB``,
``format_gb``, ``check_mode``, ``check_max_vram``, ``resolve_device``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Placement", "ResidentPlacement", "DeviceLedger", "OFFLOAD_MODES", "PARTS", "GB", "format_gb",
           "check_mode", "check_max_vram", "resolve_device"]

GB = 2**30
OFFLOAD_MODES = ("none", "model", "blocks")
PARTS = ("encoder", "transformer", "vae")  # the names a pipeline passes to ``Placement.use``


@runtime_checkable
class Placement(Protocol):
    """Where the pipeline computes, and how a component gets ready to compute there."""

    device: torch.device  # where computation happens (latents, activations, the encoder's outputs)

    def use(self, part: str, module: nn.Module) -> ContextManager[None]:
        """Make ``module`` (``part`` in ``PARTS``) ready to compute on ``device`` while the context is open; it may
        be moved back afterwards."""
        ...


class ResidentPlacement:
    """Compute wherever the weights are and never move them: ``device`` is the device of ``anchor()``'s first
    parameter (the transformer's, for a pipeline), so moving the model moves the computation with it."""

    def __init__(self, anchor: Callable[[], torch.device]) -> None:
        self._anchor = anchor

    @property
    def device(self) -> torch.device:
        return self._anchor()

    @contextlib.contextmanager
    def use(self, part: str, module: nn.Module) -> Iterator[None]:
        yield

    def __repr__(self) -> str:
        return f"ResidentPlacement(device={self.device})"


class DeviceLedger:
    """Weight bytes a placement has on the device now (``resident``) and at most so far (``peak``)."""

    def __init__(self) -> None:
        self.resident = 0
        self.peak = 0

    def add(self, nbytes: int) -> None:
        self.resident += nbytes
        self.peak = max(self.peak, self.resident)

    def remove(self, nbytes: int) -> None:
        self.resident -= nbytes
        if self.resident < 0:
            raise RuntimeError(f"DeviceLedger: released more bytes than were placed (resident {self.resident})")

    def reset_peak(self) -> None:
        self.peak = self.resident

    def __repr__(self) -> str:
        return f"DeviceLedger(resident={format_gb(self.resident)}, peak={format_gb(self.peak)})"


# ---------------------------------------------------------------------------------------------------------------
# Argument checks shared by the pipeline, the CLI and the placements
# ---------------------------------------------------------------------------------------------------------------


def format_gb(nbytes: float) -> str:
    """``nbytes`` in GB (2**30 bytes): '12.34 GB', small sizes with 3 significant digits ('0.000363 GB')."""
    gb = nbytes / GB
    return f"{gb:.2f} GB" if gb >= 1 else f"{gb:.3g} GB"


def check_mode(mode: object) -> str:
    """``mode`` if it is one of ``OFFLOAD_MODES``, else a ValueError listing them."""
    if not isinstance(mode, str) or mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    return mode


def check_max_vram(max_vram: object) -> int | None:
    """``max_vram`` in bytes (a positive integer, or None for no limit), else a ValueError saying why."""
    if max_vram is None:
        return None
    if isinstance(max_vram, bool) or not isinstance(max_vram, (int, float)):
        raise ValueError(f"max_vram must be a number of bytes or None, got {type(max_vram).__name__} {max_vram!r}")
    if not math.isfinite(max_vram) or max_vram <= 0:
        raise ValueError(f"max_vram must be a positive number of bytes, got {max_vram!r}")
    return int(max_vram)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The compute device: ``device`` as given, or CUDA when it is available and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and resolved.index is None:
        # one name per device, so tensors' devices compare equal to it
        resolved = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return resolved
