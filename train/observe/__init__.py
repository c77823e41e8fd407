"""Watching a training run: progress bar, loss per noise level, TensorBoard, sample grids, loss curve, metrics log.

Everything here is passive: the training loop hands values in, nothing reaches into the model or the optimizer.
Only the process that reports (rank 0) should create the writers; the others pass ``enabled=False`` where offered.

| module | job |
|---|---|
| ``progress.py`` | ``TrainProgress``: tqdm bar with ETA and the smoothed loss |
| ``timestep_bins.py`` | ``TimestepLossBins``: running mean loss per bin of the noise level s |
| ``tensorboard.py`` | ``TensorBoardLogger``: scalars and images, inactive (one log line) without tensorboard |
| ``grid.py`` | ``sample_grid``: labelled source(s) / result / target rows of validation samples |
| ``loss_curve.py`` | ``draw_loss_curve`` / ``save_loss_curve``: PIL line chart, raw + smoothed (+ held-out) |
| ``metrics_log.py`` | ``MetricsLog``: JSONL appended one whole line per write, rewound on resume |
| ``drawing.py`` | fonts and text fitting shared by the pictures |

A run directory then holds ``metrics.jsonl``, ``tensorboard/``, ``samples/step-NNNNNN.png`` and ``loss_curve.png``
(names chosen by the trainer; images are written atomically with ``firered_core.images.save_image``).
"""

from .grid import ValidationSample, grid_size, sample_grid
from .loss_curve import draw_loss_curve, nice_ticks, save_loss_curve, smooth
from .metrics_log import MetricsLog, read_metrics
from .progress import TrainProgress
from .tensorboard import TensorBoardLogger
from .timestep_bins import TimestepLossBins

__all__ = [
    "MetricsLog", "TensorBoardLogger", "TimestepLossBins", "TrainProgress", "ValidationSample", "draw_loss_curve",
    "grid_size", "nice_ticks", "read_metrics", "sample_grid", "save_loss_curve", "smooth",
]
