"""The vocabulary of synthetic scenes: named colours, shape kinds, grid positions, sizes and words.

Everything a scene can contain has an English and a Chinese name here, so instructions are generated from the
same table that rendering uses and can never name a colour the image does not show.

Colours come in two families that are kept far apart on purpose:

- ``OBJECT_COLORS`` are saturated (or black); shapes and text use them.
- ``BACKGROUND_COLORS`` are muted (low spread between channels); solid, gradient and striped backgrounds use them.

Because a gradient or stripe only mixes background colours, every background pixel stays muted, and a check can
tell "this pixel is the red of the red circle" from "this is background" with a plain per-channel tolerance.
``CANVAS`` (white) is the blank canvas of the extract edit and the paper of the outline style.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Named:
    """A vocabulary entry: its key in scene descriptions plus its English and Chinese names."""

    key: str
    en: str
    cn: str


@dataclass(frozen=True)
class NamedColor(Named):
    rgb: RGB = (0, 0, 0)


def _colors(*entries: NamedColor) -> dict[str, NamedColor]:
    return {c.key: c for c in entries}


OBJECT_COLORS: dict[str, NamedColor] = _colors(
    NamedColor("red", "red", "红色", (220, 30, 30)),
    NamedColor("green", "green", "绿色", (30, 160, 50)),
    NamedColor("blue", "blue", "蓝色", (30, 70, 220)),
    NamedColor("yellow", "yellow", "黄色", (245, 215, 20)),
    NamedColor("orange", "orange", "橙色", (250, 130, 10)),
    NamedColor("purple", "purple", "紫色", (130, 40, 180)),
    NamedColor("cyan", "cyan", "青色", (20, 190, 210)),
    NamedColor("magenta", "magenta", "品红色", (220, 40, 170)),
    NamedColor("black", "black", "黑色", (15, 15, 15)),
)

BACKGROUND_COLORS: dict[str, NamedColor] = _colors(
    NamedColor("beige", "beige", "米色", (232, 222, 196)),
    NamedColor("light_gray", "light gray", "浅灰色", (196, 196, 196)),
    NamedColor("sky_blue", "sky blue", "天蓝色", (168, 204, 232)),
    NamedColor("mint", "mint green", "薄荷绿色", (184, 228, 200)),
    NamedColor("lavender", "lavender", "淡紫色", (212, 198, 234)),
    NamedColor("peach", "peach", "桃色", (250, 188, 160)),
    NamedColor("slate", "dark slate", "深灰蓝色", (62, 72, 92)),
    NamedColor("olive", "olive", "橄榄色", (112, 116, 80)),
)

CANVAS = NamedColor("white", "white", "白色", (255, 255, 255))

ALL_COLORS: dict[str, NamedColor] = {**OBJECT_COLORS, **BACKGROUND_COLORS, CANVAS.key: CANVAS}

SHAPE_KINDS: dict[str, Named] = {n.key: n for n in (
    Named("circle", "circle", "圆形"),
    Named("square", "square", "正方形"),
    Named("triangle", "triangle", "三角形"),
    Named("star", "star", "五角星"),
    Named("diamond", "diamond", "菱形"),
    Named("hexagon", "hexagon", "六边形"),
    Named("cross", "cross", "十字"),
    Named("heart", "heart", "爱心"),
    Named("ring", "ring", "圆环"),
    Named("arrow", "arrow", "箭头"),
    Named("house", "house", "小房子"),
    Named("moon", "crescent moon", "月牙"),
)}

# Cells of the 3x3 layout grid, row-major; the names are how instructions say where something is.
POSITIONS: tuple[Named, ...] = (
    Named("0", "top left", "左上角"), Named("1", "top middle", "上方"), Named("2", "top right", "右上角"),
    Named("3", "middle left", "左侧"), Named("4", "center", "中间"), Named("5", "middle right", "右侧"),
    Named("6", "bottom left", "左下角"), Named("7", "bottom middle", "下方"), Named("8", "bottom right", "右下角"),
)
ROWS: tuple[Named, ...] = (Named("0", "top", "顶部"), Named("1", "middle", "中部"), Named("2", "bottom", "底部"))

# Shape radius as a fraction of half a grid cell; "bigger" / "smaller" move one step along this list.
SIZES: dict[str, float] = {"small": 0.5, "medium": 0.7, "large": 0.92}
SIZE_NAMES: dict[str, Named] = {
    "small": Named("small", "small", "小"), "medium": Named("medium", "medium-sized", "中等大小"),
    "large": Named("large", "large", "大"),
}

BACKGROUND_KINDS: dict[str, Named] = {n.key: n for n in (
    Named("solid", "plain", "纯色"), Named("gradient", "gradient", "渐变"), Named("stripes", "striped", "条纹"),
)}

# Short upper-case words: they fit one grid row at the default size and read the same in both languages.
WORDS: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "SKY", "MAP", "BOX", "FOX", "OWL", "BEE", "ICE", "JOY", "ART", "YES", "WOW", "HI",
    "GO", "STAR", "MOON", "TREE", "BIRD", "FISH", "LOVE", "COOL", "SALE", "OPEN", "STOP", "HOME", "RAIN",
    "WIND", "LEAF", "KING", "BLUE", "GOLD", "ZOOM", "PLAY", "EXIT",
)


def color_rgb(key: str) -> RGB:
    """RGB of any named colour; raises ``KeyError`` for an unknown name."""
    return ALL_COLORS[key].rgb
