"""The training progress bar: steps done of the total, rate, ETA, and the smoothed loss.

::

    with TrainProgress(cfg.schedule.max_steps, start_step=resumed_step, enabled=is_main_process) as bar:
        for step in range(resumed_step, max_steps):
            ...
            bar.update(step + 1, loss=loss.item(), lr=scheduler.get_last_lr()[0])

A thin layer over tqdm. The bar starts at ``start_step`` on resume, so the ETA counts only the steps still to run
at the speed of this process. ``update`` takes the absolute step (a repeated or skipped report cannot make the bar
drift) and the raw loss; the bar shows its debiased moving average, which is readable where the per-step loss
jumps with the timestep. Other ranks pass ``enabled=False`` and get a silent object. To keep log lines from
breaking the bar, run the loop inside ``tqdm.contrib.logging.logging_redirect_tqdm()``.
"""

from __future__ import annotations

import math
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["TrainProgress"]


class TrainProgress:
    """tqdm bar over optimizer steps with the smoothed loss and extra values in its postfix."""

    def __init__(self, total_steps: int, *, start_step: int = 0, enabled: bool = True, desc: str = "train",
                 loss_smoothing: float = 0.9, file: IO[str] | None = None) -> None:
        if not 0.0 <= loss_smoothing < 1.0:
            raise ValueError(f"TrainProgress: loss_smoothing must lie in [0, 1), got {loss_smoothing}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"TrainProgress: start_step {start_step} is outside 0..{total_steps}")
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                         disable=not enabled, file=file)
        self._weight = loss_smoothing
        self._avg, self._n = 0.0, 0

    @property
    def smoothed_loss(self) -> float | None:
        """Debiased moving average of the finite losses reported so far (None before the first)."""
        return self._avg / (1 - self._weight**self._n) if self._n else None

    @property
    def step(self) -> int:
        return int(self._bar.n)

    def update(self, step: int, loss: float | None = None, **values: Any) -> None:
        """Move the bar to ``step`` (steps done) and show the smoothed loss and ``values`` (numbers are shortened)."""
        if loss is not None and math.isfinite(loss):
            self._avg, self._n = self._weight * self._avg + (1 - self._weight) * loss, self._n + 1
        postfix = {}
        if self.smoothed_loss is not None:
            postfix["loss"] = f"{self.smoothed_loss:.4f}"
        for key, value in values.items():
            postfix[key] = f"{value:.3g}" if isinstance(value, float) else value
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "TrainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
