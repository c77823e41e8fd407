"""Random scenes: the starting points that edits are made on.

``random_scene`` draws a background (solid, gradient or stripes of muted colours), one to four shapes in distinct
grid cells, and sometimes a word in one grid row. Within a scene no two shapes share both kind and colour, so
"the red circle" always names exactly one object; ``describe`` picks the shortest unambiguous name.

All randomness comes from the ``random.Random`` passed in, so a seed fixes the scene.

Public API: ``SceneOptions``, ``random_scene``, ``random_background``, ``random_shape``, ``describe``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Collection

from ..scenes.palette import BACKGROUND_COLORS, OBJECT_COLORS, SHAPE_KINDS, SIZES, WORDS
from ..scenes.render import text_fits
from ..scenes.scene import Background, Scene, Shape, TextItem


@dataclass(frozen=True)
class SceneOptions:
    """How busy random scenes are."""

    size: int = 64  # canvas side in pixels, a multiple of 16
    min_shapes: int = 1
    max_shapes: int = 4  # at most 9 cells, minus a text row when there is text
    text_probability: float = 0.25  # chance that a scene carries a word (text edits always get one)
    stripe_period_fraction: float = 1 / 8  # stripe band width as a fraction of the canvas: fixed, so learnable

    def __post_init__(self) -> None:
        if not 0 <= self.min_shapes <= self.max_shapes <= 6:
            raise ValueError("need 0 <= min_shapes <= max_shapes <= 6 (three cells go to text)")


def random_background(rng: random.Random, size: int, options: SceneOptions = SceneOptions(),
                      kind: str | None = None, avoid: Background | None = None) -> Background:
    """A random background; ``avoid`` is never returned (for "change the background")."""
    names = sorted(BACKGROUND_COLORS)
    period = max(2, round(size * options.stripe_period_fraction))
    while True:
        k = kind or rng.choice(("solid", "solid", "gradient", "stripes"))
        a, b = rng.sample(names, 2)
        if k == "solid":
            bg = Background("solid", (a, a), "horizontal", period)
        elif k == "gradient":
            bg = Background("gradient", (a, b), rng.choice(("horizontal", "vertical", "diagonal")), period)
        else:
            bg = Background("stripes", (a, b), rng.choice(("horizontal", "vertical")), period)
        if bg != avoid:
            return bg


def random_shape(rng: random.Random, cell: int, taken: Collection[tuple[str, str]] = (),
                 size: str | None = None) -> Shape:
    """A shape in ``cell`` whose (kind, colour) is not in ``taken``."""
    while True:
        shape = Shape(rng.choice(sorted(SHAPE_KINDS)), rng.choice(sorted(OBJECT_COLORS)), cell,
                      size or rng.choice(sorted(SIZES)))
        if (shape.kind, shape.color) not in taken:
            return shape


def random_word(rng: random.Random, size: int, avoid: str = "") -> str:
    fitting = [w for w in WORDS if w != avoid and text_fits(w, size)]
    return rng.choice(fitting)


def random_scene(rng: random.Random, options: SceneOptions = SceneOptions(), with_text: bool | None = None,
                 n_shapes: int | None = None) -> Scene:
    """A random scene; ``with_text`` / ``n_shapes`` force those choices."""
    size = options.size
    text = None
    if with_text if with_text is not None else rng.random() < options.text_probability:
        text = TextItem(random_word(rng, size), rng.choice(sorted(OBJECT_COLORS)), rng.randrange(3))
    free = [c for c in range(9) if text is None or c not in text.cells]
    count = n_shapes if n_shapes is not None else rng.randint(options.min_shapes, options.max_shapes)
    cells = rng.sample(free, min(count, len(free)))
    shapes: list[Shape] = []
    for cell in sorted(cells):
        shapes.append(random_shape(rng, cell, {(s.kind, s.color) for s in shapes}))
    return Scene(size, random_background(rng, size, options), tuple(shapes), text)


def describe(shape: Shape) -> tuple[str, str]:
    """(English, Chinese) name of a shape: "red circle" / "红色圆形"; unique within a scene by construction."""
    return (f"{OBJECT_COLORS[shape.color].en} {SHAPE_KINDS[shape.kind].en}",
            f"{OBJECT_COLORS[shape.color].cn}{SHAPE_KINDS[shape.kind].cn}")
