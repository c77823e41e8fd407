"""Image similarity: PSNR and SSIM of images in [0, 255], computed by kornia.

- ``psnr(a, b)``: 10 log10(255^2 / MSE) over all pixels and channels (``kornia.metrics.psnr``); identical images
  give ``inf``; ``finite_db`` counts that as 100 dB where PSNRs are subtracted, compared or averaged.
- ``ssim(a, b)``: the structural similarity of Wang et al. (2004) with its usual constants - an 11-tap Gaussian
  window of sigma 1.5, K1 = 0.01, K2 = 0.03 - over the "valid" window positions of every RGB channel, averaged
  (``kornia.metrics.ssim`` with ``padding="valid"`` and no ``eps``). Images smaller than the window use the
  largest odd window that fits.

Both accept PIL images or (H, W, 3) / (H, W) arrays and compute in float64.

Public API: ``psnr``, ``finite_db``, ``ssim``, ``to_array``.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | np.ndarray

_L = 255.0


def to_array(img: ImageLike) -> np.ndarray:
    """Float64 (H, W, C) array in [0, 255]."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.float64)
    return a[..., None] if a.ndim == 2 else a


def psnr(a: ImageLike, b: ImageLike) -> float:
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr of different shapes {x.shape} and {y.shape}")
    return float(kornia.metrics.psnr(torch.from_numpy(x), torch.from_numpy(y), _L))


def finite_db(db: float) -> float:
    """A PSNR with the ``inf`` of identical images counted as 100 dB (above any real 8-bit difference)."""
    return 100.0 if math.isinf(db) else db


def ssim(a: ImageLike, b: ImageLike, taps: int = 11) -> float:
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim of different shapes {x.shape} and {y.shape}")
    taps = min(taps, x.shape[0], x.shape[1])
    taps -= 1 - taps % 2  # kornia's window has a centre tap
    x_t, y_t = (torch.from_numpy(v).permute(2, 0, 1)[None] for v in (x, y))  # [1, C, H, W]
    return float(kornia.metrics.ssim(x_t, y_t, taps, _L, eps=0.0, padding="valid").mean())
