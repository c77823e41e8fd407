"""Loss per noise level: running means of the per-sample loss in equal-width bins of the timestep ``s``.

The flow-matching loss depends strongly on the noise level (near s = 0 the target is almost the input; near s = 1
it is almost pure noise), so one averaged loss hides whether a run improves where it matters. ``TimestepLossBins``
keeps a sum and a count per bin of [0, 1] (s = 1 falls in the last bin)::

    bins = TimestepLossBins(10)
    bins.update(s, per_sample_loss)          # [B] each, any device
    tb.scalars(step, bins.scalars())         # {"loss_by_t/0.0-0.1": ..., ...} for the bins that saw samples
    bins.reset()                             # start the next logging window

Sums and counts are float64 / int64 tensors on ``device``: in a distributed run, ``all_reduce`` both (sum) before
reading the means to get the global picture. ``state_dict`` / ``load_state_dict`` carry a window across a resume.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["TimestepLossBins"]


class TimestepLossBins:
    """Sum and count of per-sample losses in ``n_bins`` equal-width bins of s in [0, 1]."""

    def __init__(self, n_bins: int = 10, device: torch.device | str = "cpu") -> None:
        if n_bins < 1:
            raise ValueError(f"TimestepLossBins: n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.sums = torch.zeros(n_bins, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_bins, dtype=torch.int64, device=device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Add one batch: ``timesteps`` (s in [0, 1]) and ``losses`` of the same shape, one per sample."""
        t = timesteps.detach().reshape(-1).to(self.sums.device, torch.float64)
        loss = losses.detach().reshape(-1).to(self.sums.device, torch.float64)
        if t.shape != loss.shape:
            raise ValueError(f"TimestepLossBins.update: {t.numel()} timesteps but {loss.numel()} losses")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"TimestepLossBins.update: timesteps must lie in [0, 1] (s, not t*1000), got "
                             f"{t.min().item():.4g}..{t.max().item():.4g}")
        index = (t * self.n_bins).long().clamp_(max=self.n_bins - 1)
        self.sums.index_add_(0, index, loss)
        self.counts.index_add_(0, index, torch.ones_like(index))

    def means(self) -> list[float | None]:
        """Mean loss per bin since the last reset; None for bins without samples."""
        sums, counts = self.sums.cpu().tolist(), self.counts.cpu().tolist()
        return [s / c if c else None for s, c in zip(sums, counts)]

    def edges(self) -> list[tuple[float, float]]:
        return [(i / self.n_bins, (i + 1) / self.n_bins) for i in range(self.n_bins)]

    def labels(self) -> list[str]:
        """Bin names for logs: "0.0-0.1" ... (two decimals when the bins are narrower than 0.1)."""
        digits = 1 if self.n_bins <= 10 and 10 % self.n_bins == 0 else 2
        return [f"{lo:.{digits}f}-{hi:.{digits}f}" for lo, hi in self.edges()]

    def scalars(self, prefix: str = "loss_by_t") -> dict[str, float]:
        """``{prefix/label: mean}`` for the bins that saw samples (for TensorBoard and the metrics log)."""
        return {f"{prefix}/{label}": mean for label, mean in zip(self.labels(), self.means()) if mean is not None}

    def reset(self) -> None:
        self.sums.zero_()
        self.counts.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "sums": self.sums.cpu().tolist(), "counts": self.counts.cpu().tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n_bins"]) != self.n_bins:
            raise ValueError(f"TimestepLossBins: state has {state['n_bins']} bins, this has {self.n_bins}")
        self.sums.copy_(torch.tensor(state["sums"], dtype=torch.float64))
        self.counts.copy_(torch.tensor(state["counts"], dtype=torch.int64))
