"""Phase correlation (``firered_bench.grade.alignment``): known whole- and sub-pixel shifts are recovered, in the
right direction, and unrelated images give a low peak."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from firered_bench.grade.alignment import phase_shift


def _scene(width: int = 120, height: int = 80, seed: int = 0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Smooth blobs as RGB in [0, 255], the content moved by (``dx``, ``dy``) px: drawn analytically at the moved
    positions, so a sub-pixel shift is exact and the borders show new content, as in a crop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((height, width))
    for _ in range(40):
        cx, cy, r = rng.uniform(-10, width + 10), rng.uniform(-10, height + 10), rng.uniform(2, 8)
        out += rng.uniform(-1, 1) * np.exp(-((xx - dx - cx) ** 2 + (yy - dy - cy) ** 2) / (2 * r * r))
    out = (out + 2) / 4 * 255
    return np.repeat(out[..., None], 3, axis=2)


@pytest.mark.parametrize("dx, dy", [(0, 0), (3, 0), (-2, 5), (0.5, -0.25), (1.3, 2.7)])
def test_known_shifts_are_recovered(dx: float, dy: float) -> None:
    shift = phase_shift(_scene(), _scene(dx=dx, dy=dy))
    assert shift.dx == pytest.approx(dx, abs=0.25) and shift.dy == pytest.approx(dy, abs=0.25)
    assert shift.peak > 0.9


def test_a_crop_offset_reads_as_the_content_moving() -> None:
    scene = _scene(140, 100)
    reference, moved = scene[10:90, 10:130], scene[7:87, 14:134]  # content moves 4 px left, 3 px down
    shift = phase_shift(Image.fromarray(reference.astype(np.uint8)), Image.fromarray(moved.astype(np.uint8)))
    assert shift.dx == pytest.approx(-4, abs=0.3) and shift.dy == pytest.approx(3, abs=0.3)


def test_unrelated_images_give_a_low_peak_and_bad_sizes_are_refused() -> None:
    unrelated = phase_shift(_scene(seed=0), _scene(seed=1))
    same = phase_shift(_scene(seed=0), _scene(seed=0))
    assert unrelated.peak < 0.8 and same.peak == pytest.approx(1) and same.magnitude == 0
    with pytest.raises(ValueError, match="one size"):
        phase_shift(_scene(120, 80), _scene(100, 80))
    with pytest.raises(ValueError, match="at least 4 px"):
        phase_shift(np.zeros((3, 8, 3)), np.zeros((3, 8, 3)))
