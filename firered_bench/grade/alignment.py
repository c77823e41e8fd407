"""How far one image is shifted against another: phase correlation with a sub-pixel peak (``torch.fft``).

``phase_shift(reference, moved)`` returns ``Shift(dx, dy, peak)``: ``moved`` shows ``reference``'s content
displaced by ``dx`` pixels to the right and ``dy`` down. Both images have the same size and are compared in
luminance (ITU-R 601 weights), mean removed and tapered by a Hann window so the image borders do not correlate.

The normalised cross-power spectrum ``conj(F(a)) F(b) / |conj(F(a)) F(b)|`` is weighted by a Gaussian of
``LOWPASS`` cycles/px and transformed back; its highest value sits at the shift. (Whitening alone gives the nearly
empty high frequencies of smooth images - a VAE's output - as much weight as the rest, and together with the window
they pull the peak towards zero: a 3 px shift read as 2.7 px without the weighting, 2.95 px with it.) The peak is
refined to 1/``UPSAMPLE`` px by evaluating that inverse transform on a finer grid within one pixel of it
(matrix-multiply DFT, after Guizar-Sicairos et al., 2008). ``peak`` is the value there, scaled so that a pure
translation gives 1: above 0.9 for the shifts of a few pixels in the tests, lower as the images differ in other
ways (an edit, blur, a zoom), 0.3-0.7 for unrelated smooth images, whose "shift" means nothing.

Public API: ``Shift``, ``phase_shift``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .metrics import ImageLike, to_array

__all__ = ["Shift", "phase_shift"]

_LUMA = (0.299, 0.587, 0.114)
UPSAMPLE = 20  # the sub-pixel peak is found to 1/20 px
LOWPASS = 0.1  # cycles/px: the Gaussian weighting of the whitened spectrum (see the module docstring)


@dataclass(frozen=True)
class Shift:
    """``moved``'s displacement against ``reference`` in pixels (right, down) and the correlation peak (<= 1)."""

    dx: float
    dy: float
    peak: float

    @property
    def magnitude(self) -> float:
        return math.hypot(self.dx, self.dy)


def _luma(img: ImageLike) -> torch.Tensor:
    a = to_array(img.convert("RGB") if isinstance(img, Image.Image) else img)
    gray = a[..., 0] if a.shape[-1] == 1 else np.tensordot(a[..., :3], _LUMA, axes=([-1], [0]))
    return torch.from_numpy(np.ascontiguousarray(gray))


def _refine(spectrum: torch.Tensor, row: int, col: int) -> tuple[float, float, float]:
    """(dy, dx, value) of the correlation surface's maximum near (``row``, ``col``), found on a grid ``UPSAMPLE``
    times finer than the pixels within one pixel of it: the inverse DFT of ``spectrum`` evaluated there directly
    (two small matrix products), which follows the surface's true shape where a fitted parabola is biased."""
    height, width = spectrum.shape
    offsets = torch.arange(-UPSAMPLE, UPSAMPLE + 1, dtype=torch.float64) / UPSAMPLE
    ys, xs = row + offsets, col + offsets
    ky = torch.fft.fftfreq(height, dtype=torch.float64)
    kx = torch.fft.fftfreq(width, dtype=torch.float64)
    rows = torch.exp(2j * math.pi * ys[:, None] * ky[None, :])  # [n, H]
    cols = torch.exp(2j * math.pi * kx[:, None] * xs[None, :])  # [W, n]
    fine = (rows @ spectrum @ cols).real / (height * width)  # [n, n]
    i, j = divmod(int(torch.argmax(fine)), fine.shape[1])
    return float(ys[i]), float(xs[j]), float(fine[i, j])


def phase_shift(reference: ImageLike, moved: ImageLike) -> Shift:
    """The shift of ``moved`` against ``reference`` (see the module docstring); a ``ValueError`` when their sizes
    differ or a side is shorter than 4 px."""
    a, b = _luma(reference), _luma(moved)
    if a.shape != b.shape:
        raise ValueError(f"phase_shift needs images of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    height, width = a.shape
    if min(height, width) < 4:
        raise ValueError(f"phase_shift needs sides of at least 4 px, got {width}x{height}")
    window = torch.outer(torch.hann_window(height, periodic=False, dtype=torch.float64),
                         torch.hann_window(width, periodic=False, dtype=torch.float64))
    fa = torch.fft.fft2((a - a.mean()) * window)
    fb = torch.fft.fft2((b - b.mean()) * window)
    cross = fa.conj() * fb
    ky = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    weights = torch.exp(-(kx ** 2 + ky ** 2) / (2 * LOWPASS ** 2))
    normalised = cross / cross.abs().clamp_min(1e-12) * (weights / weights.mean())  # peak 1 for a translation
    surface = torch.fft.ifft2(normalised).real
    row, col = divmod(int(torch.argmax(surface)), width)
    dy, dx, peak = _refine(normalised, row, col)
    dy = dy - height if dy > height / 2 else dy  # wrap to signed shifts
    dx = dx - width if dx > width / 2 else dx
    return Shift(dx=dx, dy=dy, peak=peak)
