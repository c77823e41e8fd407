"""Capturing and restoring the global random number generators, for exact resume.

A resumed run continues bit for bit only if every global RNG the loop draws from is back where it was: Python's
``random``, numpy's legacy global generator, torch's CPU generator and, when CUDA is in use, each GPU's generator.
``capture_rng_states()`` returns them as a plain dict (``python``: ``random.getstate()`` tuple, ``numpy``:
``np.random.get_state()`` tuple, ``torch``: a uint8 tensor, ``cuda``: a list of uint8 tensors), which
``state_codec`` stores without pickle; ``restore_rng_states`` puts them back.

Distributed runs: every rank has its own states. Pass a list with one dict per rank to the checkpoint and
restore with ``rank=``; a single dict is restored on every rank.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["RNGStates", "capture_rng_states", "restore_rng_states"]

log = logging.getLogger(__name__)

RNGStates = dict[str, Any]


def capture_rng_states() -> RNGStates:
    """This process's global RNG states (CUDA only if CUDA has been initialised: capturing must not start it)."""
    states: RNGStates = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _for_rank(states: Mapping[str, Any] | Sequence[Mapping[str, Any]], rank: int) -> Mapping[str, Any]:
    if isinstance(states, Mapping):
        return states
    if not 0 <= rank < len(states):
        raise ValueError(f"the checkpoint has RNG states for {len(states)} rank(s), not for rank {rank}")
    return states[rank]


def restore_rng_states(states: Mapping[str, Any] | Sequence[Mapping[str, Any]], rank: int = 0) -> None:
    """Set the global RNGs to ``states`` (as captured; a list means one entry per rank)."""
    own = _for_rank(states, rank)
    unknown = set(own) - {"python", "numpy", "torch", "cuda"}
    if unknown:
        raise ValueError(f"unknown RNG state entries {sorted(unknown)}")
    if "python" in own:
        version, internal, gauss = own["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in own:
        np.random.set_state(tuple(own["numpy"]))
    if "torch" in own:
        torch.set_rng_state(own["torch"].to(device="cpu", dtype=torch.uint8))
    if "cuda" in own:
        cuda = list(own["cuda"])
        if not torch.cuda.is_available():
            log.warning("the checkpoint holds CUDA RNG states but CUDA is not available: they are not restored")
        elif len(cuda) != torch.cuda.device_count():
            log.warning("the checkpoint holds CUDA RNG states for %d GPU(s), this process sees %d: not restored",
                        len(cuda), torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all([s.to(device="cpu", dtype=torch.uint8) for s in cuda])
