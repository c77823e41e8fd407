"""Image similarity in plain numpy: PSNR and SSIM, for images in [0, 255].

- ``psnr(a, b)``: 10 log10(255^2 / MSE) over all pixels and channels; identical images give ``inf``;
  ``finite_db`` counts that as 100 dB where PSNRs are subtracted, compared or averaged.
- ``ssim(a, b)``: the structural similarity of Wang et al. (2004) with its usual constants - an 11-tap Gaussian
  window of sigma 1.5, K1 = 0.01, K2 = 0.03 - computed per RGB channel over the "valid" window positions and
  averaged. Images smaller than the window use a window the size of the image.

Both accept PIL images or (H, W, 3) / (H, W) arrays and need no dependency beyond numpy.

Public API: ``psnr``, ``finite_db``, ``ssim``, ``to_array``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

ImageLike = Image.Image | np.ndarray

_K1, _K2, _L = 0.01, 0.03, 255.0


def to_array(img: ImageLike) -> np.ndarray:
    """Float64 (H, W, C) array in [0, 255]."""
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.float64)
    return a[..., None] if a.ndim == 2 else a


def psnr(a: ImageLike, b: ImageLike) -> float:
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"psnr of different shapes {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(_L * _L / mse)


def finite_db(db: float) -> float:
    """A PSNR with the ``inf`` of identical images counted as 100 dB (above any real 8-bit difference)."""
    return 100.0 if math.isinf(db) else db


def _gaussian(taps: int, sigma: float) -> np.ndarray:
    r = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    k = np.exp(-(r**2) / (2 * sigma**2))
    return k / k.sum()


def _filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of an (H, W) array."""
    rows = sliding_window_view(x, k.size, axis=1) @ k
    return sliding_window_view(rows, k.size, axis=0) @ k


def ssim(a: ImageLike, b: ImageLike, taps: int = 11, sigma: float = 1.5) -> float:
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim of different shapes {x.shape} and {y.shape}")
    taps = min(taps, x.shape[0], x.shape[1])
    k = _gaussian(taps, sigma)
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    scores = []
    for ch in range(x.shape[2]):
        xc, yc = x[..., ch], y[..., ch]
        mx, my = _filter(xc, k), _filter(yc, k)
        vx = _filter(xc * xc, k) - mx * mx
        vy = _filter(yc * yc, k) - my * my
        cov = _filter(xc * yc, k) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))
