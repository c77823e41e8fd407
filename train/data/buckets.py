"""Bucket keys and bucket sizes: the arithmetic of the Multi-Condition Aware Bucket Sampler.

Key. A sample's bucket key is (task, aspect of each source in order, aspect of the target), each aspect being
width / height clamped to [1/4, 4] and rounded to the nearest 0.1. The rounding is exact integer arithmetic
and halves round up, so 1050x1000 (1.05) -> 1.1 and a 1:4 portrait (0.25) -> 0.3, where float ``round`` gives
1.0 or 0.2 depending on binary representation. The smallest key aspect is therefore 0.3 and the largest 4.0.

Size. All samples of a bucket are resized (cover) and centre-cropped to one size per image slot, so the k-th
sources of a batch share a shape. For each slot (every source position and the target) the size ``(h, w)``:

1. has both sides multiples of ``multiple`` (16 = 8x VAE downsampling x 2x2 patches: one latent token per
   16x16 pixels; 32 also works and matches the inference sizing rule, at coarser aspect steps);
2. keeps the bucket's aspect: ``w / h`` rounds to the slot's key aspect and differs from it by at most
   ``aspect_tolerance`` (relative), so the crop stays below that fraction of the image (if no size meets this,
   the sizes with the smallest aspect error are used);
3. has ``h * w <= max_area`` (the stage's resolution, e.g. 1024^2 for SFT);
4. minimises ``sum_i |A_i - h * w|`` over the bucket's samples, ``A_i = min(H_i * W_i, max_area)``: the bucket
   area is as close as possible to the median of its samples' areas, so images are neither upscaled past their
   own resolution nor shrunk more than the stage needs. Ties go to the smaller aspect error, then the larger area.

Tokens. A size costs ``ceil(h * w / p^2)`` tokens with ``p = 16`` pixels per token side; a sample costs the sum
over its slots, and the sampler fits ``floor(token_budget / tokens)`` samples into a batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Protocol, Sequence

import numpy as np

ASPECT_MIN = Fraction(1, 4)
ASPECT_MAX = Fraction(4)
ASPECT_STEPS_PER_UNIT = 10  # aspects are rounded to 1/10


class HasSizes(Protocol):
    """What the sampler needs of a sample: its task and image sizes as (width, height). ``EditRecord`` fits."""

    @property
    def task(self) -> str: ...

    @property
    def source_sizes(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def target_size(self) -> tuple[int, int]: ...


class Dims(NamedTuple):
    """A bucket image size in pixels, tensor order."""

    height: int
    width: int


def aspect_bucket(width: int, height: int) -> float:
    """``width / height`` clamped to [1/4, 4] and rounded to the nearest 0.1, halves up (exact arithmetic)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    num, den = width, height
    if num * ASPECT_MIN.denominator < den * ASPECT_MIN.numerator:
        num, den = ASPECT_MIN.numerator, ASPECT_MIN.denominator
    elif num * ASPECT_MAX.denominator > den * ASPECT_MAX.numerator:
        num, den = ASPECT_MAX.numerator, ASPECT_MAX.denominator
    # floor(num / den * steps + 1/2) in integers: no float can turn an exact half into 0.4999...
    steps = (2 * ASPECT_STEPS_PER_UNIT * num + den) // (2 * den)
    return steps / ASPECT_STEPS_PER_UNIT


@dataclass(frozen=True, order=True)
class BucketKey:
    """(task, source aspects, target aspect); ``as_tuple`` gives the flat form of the report."""

    task: str
    sources: tuple[float, ...]
    target: float

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    def as_tuple(self) -> tuple[str | float, ...]:
        return (self.task, *self.sources, self.target)


def bucket_key(sample: HasSizes) -> BucketKey:
    """The bucket key of a sample, from its sizes only."""
    return BucketKey(sample.task, tuple(aspect_bucket(w, h) for w, h in sample.source_sizes),
                     aspect_bucket(*sample.target_size))


@dataclass(frozen=True)
class BucketDims:
    """The size of every image slot of a bucket: sources in order, then the target."""

    sources: tuple[Dims, ...]
    target: Dims

    def tokens(self, pixels_per_token: int = 16) -> int:
        """Latent tokens of one sample: ``sum_i ceil(h_i * w_i / p^2)`` over the target and sources."""
        return sum(math.ceil(d.height * d.width / pixels_per_token ** 2) for d in (*self.sources, self.target))


@functools.lru_cache(maxsize=1024)  # a few dozen aspects per run, asked for by every bucket
def _candidates(aspect: float, max_area: int, multiple: int) -> tuple[tuple[Dims, float], ...]:
    """Sizes with sides multiples of ``multiple``, area <= ``max_area`` and ``w/h`` rounding to ``aspect``,
    with their relative aspect error; the two widths nearest ``aspect * h`` for every height."""
    found = []
    # The nearest widths are at least aspect * h - multiple, so taller sizes than this cannot fit max_area.
    max_height = math.isqrt(int(max_area / aspect)) + math.ceil(multiple / aspect) + multiple
    for height in range(multiple, max_height + 1, multiple):
        exact = height * aspect
        for width in {math.floor(exact / multiple) * multiple, math.ceil(exact / multiple) * multiple}:
            if width >= multiple and height * width <= max_area and aspect_bucket(width, height) == aspect:
                found.append((Dims(height, width), abs(width / height - aspect) / aspect))
    return tuple(found)


def slot_dims(aspect: float, areas: Sequence[int], max_area: int, multiple: int = 16,
              aspect_tolerance: float = 0.02) -> Dims:
    """The size of one image slot of a bucket (rules 1-4 of the module docstring).

    ``areas`` are the pixel areas ``H_i * W_i`` of the bucket's images in this slot.
    """
    if not areas:
        raise ValueError("a bucket slot needs at least one image area")
    candidates = _candidates(aspect, max_area, multiple)
    if not candidates:
        raise ValueError(f"no {multiple}-pixel-multiple size of aspect {aspect} fits in max_area {max_area}")
    within = [c for c in candidates if c[1] <= aspect_tolerance]
    if not within:  # tiny areas: take the best aspect there is
        best = min(err for _, err in candidates)
        within = [c for c in candidates if c[1] <= best + 1e-12]
    capped = np.sort(np.minimum(np.asarray(areas, dtype=np.int64), max_area))
    prefix = np.concatenate([[0], np.cumsum(capped)])

    def cost(dims: Dims) -> int:
        # sum_i |A_i - x| from the sorted areas and their prefix sums: O(log n) per candidate
        x = dims.height * dims.width
        below = int(np.searchsorted(capped, x, side="right"))
        return x * below - int(prefix[below]) + int(prefix[-1] - prefix[below]) - x * (len(capped) - below)

    return min(within, key=lambda c: (cost(c[0]), c[1], -c[0].height * c[0].width))[0]


def bucket_dims(key: BucketKey, samples: Sequence[HasSizes], max_area: int, multiple: int = 16,
                aspect_tolerance: float = 0.02) -> BucketDims:
    """Sizes of every slot of the bucket ``key`` holding ``samples``."""
    def areas(slot: int | None) -> list[int]:
        sizes = [s.target_size if slot is None else s.source_sizes[slot] for s in samples]
        return [w * h for w, h in sizes]

    sources = tuple(slot_dims(a, areas(k), max_area, multiple, aspect_tolerance) for k, a in enumerate(key.sources))
    return BucketDims(sources, slot_dims(key.target, areas(None), max_area, multiple, aspect_tolerance))
