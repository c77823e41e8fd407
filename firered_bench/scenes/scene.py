"""Scene descriptions: what a synthetic image contains, as plain data that renders to exact pixels.

A ``Scene`` is a square canvas of ``size`` pixels with a ``Background`` (solid, gradient or stripes of muted
colours), up to nine ``Shape`` objects each sitting in its own cell of a 3x3 grid, and optionally one ``TextItem``
(a short word centred in one grid row, whose cells then hold no shape). Edits are made on these descriptions -
recolour a shape, move it to an empty cell, swap the background - and the edited scene is rendered again, so the
target of every edit is exact rather than approximated by pixel surgery.

The grid keeps objects from overlapping, which is what lets a check say "the pixels of the removed circle are now
background" without knowing what was behind it, and gives every object a position an instruction can name
("the red star in the top left").

``to_dict`` / ``scene_from_dict`` round-trip through JSON; the edit spec of every record stores the objects it
talks about in this form so checks can re-render their masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .palette import ALL_COLORS, OBJECT_COLORS, SHAPE_KINDS, SIZES

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1/y1 exclusive, in pixels


@dataclass(frozen=True)
class Background:
    """A full-canvas fill. ``colors[1]`` is ignored for solid fills; ``direction`` for solid fills too."""

    kind: str = "solid"  # solid | gradient | stripes
    colors: tuple[str, str] = ("beige", "beige")
    direction: str = "horizontal"  # gradient: horizontal | vertical | diagonal; stripes: horizontal | vertical
    period: int = 8  # stripe width in pixels (one colour band)

    def __post_init__(self) -> None:
        if self.kind not in ("solid", "gradient", "stripes", "canvas"):
            raise ValueError(f"unknown background kind {self.kind!r}")
        for c in self.colors:
            if c not in ALL_COLORS:
                raise ValueError(f"unknown colour {c!r}")
        if self.period < 2:
            raise ValueError("stripe period must be at least 2 pixels")


@dataclass(frozen=True)
class Shape:
    """One single-coloured object, centred in grid cell ``cell`` (0..8, row-major)."""

    kind: str
    color: str
    cell: int
    size: str = "medium"  # small | medium | large (see palette.SIZES)

    def __post_init__(self) -> None:
        if self.kind not in SHAPE_KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}")
        if self.color not in OBJECT_COLORS:
            raise ValueError(f"shapes use object colours, got {self.color!r}")
        if not 0 <= self.cell <= 8:
            raise ValueError(f"cell must be 0..8, got {self.cell}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")


@dataclass(frozen=True)
class TextItem:
    """A word centred in grid row ``row`` (0 top, 1 middle, 2 bottom)."""

    word: str
    color: str
    row: int

    def __post_init__(self) -> None:
        if not self.word or not self.word.isascii():
            raise ValueError(f"text must be a non-empty ASCII word, got {self.word!r}")
        if self.color not in OBJECT_COLORS:
            raise ValueError(f"text uses object colours, got {self.color!r}")
        if not 0 <= self.row <= 2:
            raise ValueError(f"row must be 0..2, got {self.row}")

    @property
    def cells(self) -> tuple[int, int, int]:
        return (3 * self.row, 3 * self.row + 1, 3 * self.row + 2)


@dataclass(frozen=True)
class Scene:
    """A square canvas: background, shapes in distinct free cells, and at most one word."""

    size: int
    background: Background = field(default_factory=Background)
    shapes: tuple[Shape, ...] = ()
    text: TextItem | None = None

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 16:
            raise ValueError(f"scene size must be a multiple of 16 and at least 32, got {self.size}")
        cells = [s.cell for s in self.shapes]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two shapes share a cell: {cells}")
        if self.text is not None and set(cells) & set(self.text.cells):
            raise ValueError("a shape sits in the text row")

    # ----------------------------------------------------------------------------------------------- layout

    def free_cells(self) -> list[int]:
        """Cells with neither a shape nor the text row, in order."""
        used = {s.cell for s in self.shapes} | set(self.text.cells if self.text else ())
        return [c for c in range(9) if c not in used]

    def shape_at(self, cell: int) -> Shape | None:
        return next((s for s in self.shapes if s.cell == cell), None)

    def without(self, shape: Shape) -> Scene:
        return replace(self, shapes=tuple(s for s in self.shapes if s != shape))

    def with_shape(self, shape: Shape) -> Scene:
        return replace(self, shapes=self.shapes + (shape,))

    def swapped(self, old: Shape, new: Shape) -> Scene:
        return replace(self, shapes=tuple(new if s == old else s for s in self.shapes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cell_box(cell: int, size: int) -> tuple[float, float, float, float]:
    """The float bounds (x0, y0, x1, y1) of a grid cell on a ``size`` canvas."""
    step = size / 3
    row, col = divmod(cell, 3)
    return (col * step, row * step, (col + 1) * step, (row + 1) * step)


def shape_geometry(shape: Shape, size: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius in pixels of a shape on a ``size`` canvas."""
    x0, y0, x1, y1 = cell_box(shape.cell, size)
    return (x0 + x1) / 2, (y0 + y1) / 2, SIZES[shape.size] * (x1 - x0) / 2


def pad_box(box: Box, pad: int, size: int) -> Box:
    """``box`` grown by ``pad`` pixels on every side, clipped to the canvas."""
    x0, y0, x1, y1 = box
    return (max(0, x0 - pad), max(0, y0 - pad), min(size, x1 + pad), min(size, y1 + pad))


# ------------------------------------------------------------------------------------------ serialisation

def shape_from_dict(d: dict[str, Any]) -> Shape:
    return Shape(kind=d["kind"], color=d["color"], cell=int(d["cell"]), size=d["size"])


def text_from_dict(d: dict[str, Any]) -> TextItem:
    return TextItem(word=d["word"], color=d["color"], row=int(d["row"]))


def background_from_dict(d: dict[str, Any]) -> Background:
    return Background(kind=d["kind"], colors=(d["colors"][0], d["colors"][1]), direction=d["direction"],
                      period=int(d["period"]))


def scene_from_dict(d: dict[str, Any]) -> Scene:
    text = d.get("text")
    return Scene(size=int(d["size"]), background=background_from_dict(d["background"]),
                 shapes=tuple(shape_from_dict(s) for s in d["shapes"]),
                 text=text_from_dict(text) if text else None)

