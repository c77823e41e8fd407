"""One progress callback and one cancel hook, shared by every long-running loop in the core.

Long loops (the sampler, tiled VAE decode, LoRA merging) take two optional callables and know nothing about who
shows the progress:

* ``ProgressFn(step, total, preview)``: called after unit ``step`` of ``total`` is done (``step`` counts from 1).
  ``preview`` is the current state when there is one worth showing (the sampler passes its latent tokens), else
  ``None``. The CLI maps it to tqdm (``tqdm_progress``); the ComfyUI nodes map it to ComfyUI's ProgressBar.
* ``PreviewFn(step, total, latents)``: the sampler's estimate of the clean result after unit ``step``, for a live
  preview: the pipeline passes normalised latents ``[B, C, h, w]`` (its ``x0`` prediction, unpacked). It is an
  extra hook so that nothing is computed for it unless one is given; the nodes turn it into ComfyUI's preview.
* ``CancelFn()``: polled before each unit of work; returning ``True`` makes the loop raise ``Cancelled`` at a clean
  point (no half-applied step). ComfyUI's interrupt button plugs in here.

Public API: ``ProgressFn``, ``PreviewFn``, ``CancelFn``, ``Cancelled``, ``check_cancel``, ``tqdm_progress``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

__all__ = ["ProgressFn", "PreviewFn", "CancelFn", "Cancelled", "check_cancel", "tqdm_progress"]

ProgressFn = Callable[[int, int, "torch.Tensor | None"], None]
PreviewFn = Callable[[int, int, "torch.Tensor"], None]
CancelFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """The caller's cancel hook asked a long-running loop to stop."""


def check_cancel(cancel: CancelFn | None, where: str) -> None:
    """Raise ``Cancelled`` (naming ``where``) if ``cancel`` is given and returns true."""
    if cancel is not None and cancel():
        raise Cancelled(f"{where}: cancelled by the caller")


@contextmanager
def tqdm_progress(desc: str, **tqdm_options: Any) -> Iterator[ProgressFn]:
    """A ``ProgressFn`` drawing a tqdm bar labelled ``desc``; the bar is closed when the block ends.

    The bar is created on the first report because only then is ``total`` known. Reports are absolute
    (``step`` of ``total``), so a repeated or skipped report cannot make the bar drift. ``tqdm_options`` go to
    ``tqdm`` unchanged (``leave``, ``file``, ``disable``, ...).
    """
    bar: tqdm | None = None

    def report(step: int, total: int, preview: torch.Tensor | None = None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, **tqdm_options)
        elif bar.total != total:
            bar.reset(total=total)  # a new phase (e.g. VAE tiles after sampling steps) reusing the same bar
        bar.update(step - bar.n)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()
