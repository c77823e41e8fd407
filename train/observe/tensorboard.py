"""TensorBoard event files through ``torch.utils.tensorboard``, when the tensorboard package is installed.

::

    tb = TensorBoardLogger("runs/x/tensorboard", enabled=cfg.logging.tensorboard)
    tb.scalars(step, {"loss": 0.12, "lr": 1e-5, **bins.scalars()})
    tb.image("samples", grid, step)
    tb.close()

tensorboard is an optional dependency (the ``train`` extra). Without it the logger is inactive and says so once
in the log, with the install command; every call is then a no-op, so the training loop needs no branches. Only
the process that writes logs (rank 0) should create an enabled logger.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Mapping

import numpy as np
from PIL import Image

__all__ = ["TensorBoardLogger"]

log = logging.getLogger(__name__)


@functools.cache
def _writer_class() -> Any:
    """``SummaryWriter``, or None when tensorboard is missing (cached: the notice is logged once per process)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("TensorBoard logging is off: the tensorboard package is not installed "
                    "(pip install tensorboard, or the 'train' extra of this package)")
        return None
    return SummaryWriter


class TensorBoardLogger:
    """Scalars and images for TensorBoard; inactive (every call a no-op) when disabled or unavailable."""

    def __init__(self, log_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        writer_class = _writer_class() if enabled else None
        self._writer = writer_class(log_dir=os.fspath(log_dir)) if writer_class is not None else None

    @property
    def active(self) -> bool:
        return self._writer is not None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per key (use "/" in keys to group them, e.g. "loss_by_t/0.0-0.1")."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        if self._writer is None:
            return
        self._writer.add_image(tag, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
