"""Where a module computes: its compute dtype and device, also for modules without parameters.

A module may have no floating-point weights at all and a VAE may store weights in fp8 (cast at compute time), so
``next(module.parameters())`` is not a safe question to ask. These helpers answer for every case.

Public API: ``compute_dtype``, ``module_device``.
"""

from __future__ import annotations

import torch

__all__ = ["compute_dtype", "module_device"]


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The first wide floating dtype of ``module``'s parameters (fp8 storage computes in it), else float32."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype.itemsize > 1:
            return p.dtype
    return torch.float32


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer; the CPU for a module that holds no tensors."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
