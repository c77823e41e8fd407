"""Edits made on scene descriptions: the target is the edited scene rendered again, so it is exact.

Each maker takes a ``random.Random`` and ``SceneOptions`` and returns an ``EditPlan``, or ``None`` when the scene
it drew cannot host the edit (no free cell, no shape to remove ...); the generator then simply tries again.

| op | task | sources | what changes |
|---|---|---|---|
| draw | t2i | 0 | a scene drawn from its full description |
| add | add | 1 | a new shape in a named empty cell |
| remove | remove | 1 | one shape becomes background |
| replace | replace | 1 | one shape becomes another kind (and maybe colour), same place and size |
| recolor | color | 1 | one shape changes colour |
| background | background | 1 | the background changes, objects stay |
| move | compose | 1 | one shape moves to a named empty cell |
| insert | compose | 2 | a shape of Picture 2 is added to Picture 1 in a named cell |
| resize | adjust | 1 | one shape grows or shrinks one size step |
| text_replace / text_write | text | 1 | a word is swapped / written in a named row |
| extract | extract | 1 | one shape alone on a white canvas, same place |

Public API: ``SCENE_MAKERS``, ``background_phrase``.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

import numpy as np

from ..scenes.palette import BACKGROUND_COLORS, CANVAS, OBJECT_COLORS, POSITIONS, ROWS, SHAPE_KINDS, SIZE_NAMES
from .phrasing import phrase
from .plan import EditPlan, base_spec, changed_region, shape_spec, text_spec
from ..scenes.render import text_mask
from ..scenes.scene import Background, Scene, Shape, TextItem
from .scene_sampler import SceneOptions, describe, random_background, random_scene, random_shape, random_word

Maker = Callable[[random.Random, SceneOptions], "EditPlan | None"]

_SIZE_ORDER = ("small", "medium", "large")
_GRADIENT_WORDS = {"horizontal": ("left-to-right", "从左到右"), "vertical": ("top-to-bottom", "从上到下"),
                   "diagonal": ("diagonal (top left to bottom right)", "从左上到右下")}
_STRIPE_WORDS = {"horizontal": ("horizontal", "横"), "vertical": ("vertical", "竖")}


def background_phrase(bg: Background) -> tuple[str, str]:
    """(English, Chinese) description of a background without the word "background": "plain beige"."""
    a, b = BACKGROUND_COLORS[bg.colors[0]], BACKGROUND_COLORS[bg.colors[1]]
    if bg.kind == "solid":
        return f"plain {a.en}", f"纯{a.cn}"
    if bg.kind == "gradient":
        en, cn = _GRADIENT_WORDS[bg.direction]
        return f"a {en} gradient from {a.en} to {b.en}", f"{cn}由{a.cn}渐变为{b.cn}"
    en, cn = _STRIPE_WORDS[bg.direction]
    return f"{en} {a.en} and {b.en} stripes ({a.en} first)", f"{a.cn}和{b.cn}相间的{cn}条纹（{a.cn}在先）"


def _pos(cell: int) -> dict[str, str]:
    return {"pos": POSITIONS[cell].en, "pos_cn": POSITIONS[cell].cn}


def _obj(shape: Shape, key: str = "obj") -> dict[str, str]:
    en, cn = describe(shape)
    return {key: en, f"{key}_cn": cn}


def _taken(scene: Scene) -> set[tuple[str, str]]:
    return {(s.kind, s.color) for s in scene.shapes}


# ------------------------------------------------------------------------------------------- 0 and 2 sources

def make_draw(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    scene = random_scene(rng, replace(opt, min_shapes=1, max_shapes=2), with_text=False)
    scene = replace(scene, background=random_background(rng, opt.size, opt, kind=rng.choice(("solid", "gradient"))))
    parts_en, parts_cn = [], []
    for s in scene.shapes:
        en, cn = describe(s)
        parts_en.append(f"a {SIZE_NAMES[s.size].en} {en} in the {POSITIONS[s.cell].en}")
        parts_cn.append(f"{POSITIONS[s.cell].cn}一个{SIZE_NAMES[s.size].cn}的{cn}")
    bg_en, bg_cn = background_phrase(scene.background)
    bg_noun = f"{bg_en} background" if scene.background.kind == "solid" else f"{bg_en} as background"
    en, cn = phrase("draw", rng, desc=" and ".join(parts_en), desc_cn="，".join(parts_cn),
                    bg=f"a {bg_noun}" if scene.background.kind == "solid" else bg_noun, bg_cn=bg_cn)
    spec = base_spec("t2i", "draw", opt.size, None, shapes=[shape_spec(s, opt.size) for s in scene.shapes],
                     background=_bg_spec(scene))
    return EditPlan("t2i", "draw", (), scene, en, cn, spec)


def make_insert(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    pic1 = random_scene(rng, opt)
    pic2 = random_scene(rng, replace(opt, min_shapes=max(1, opt.min_shapes)))
    candidates = [s for s in pic2.shapes if (s.kind, s.color) not in _taken(pic1)]
    cells = pic1.free_cells()
    if not candidates or not cells:
        return None
    picked = rng.choice(candidates)
    added = replace(picked, cell=rng.choice(cells))
    en, cn = phrase("insert", rng, **_obj(picked), **_pos(added.cell))
    spec = base_spec("compose", "insert", opt.size, changed_region(opt.size, added),
                     after=shape_spec(added, opt.size), taken_from=shape_spec(picked, opt.size))
    return EditPlan("compose", "insert", (pic1, pic2), pic1.with_shape(added), en, cn, spec)


# --------------------------------------------------------------------------------------------- one shape

def make_add(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    scene = random_scene(rng, replace(opt, min_shapes=0, max_shapes=max(0, opt.max_shapes - 1)))
    cells = scene.free_cells()
    if not cells:
        return None
    new = random_shape(rng, rng.choice(cells), _taken(scene))
    en, cn = phrase("add", rng, **_obj(new), **_pos(new.cell), size=SIZE_NAMES[new.size].en,
                    size_cn=SIZE_NAMES[new.size].cn)
    spec = base_spec("add", "add", opt.size, changed_region(opt.size, new), after=shape_spec(new, opt.size))
    return EditPlan("add", "add", (scene,), scene.with_shape(new), en, cn, spec)


def _pick_shape(rng: random.Random, opt: SceneOptions) -> tuple[Scene, Shape] | None:
    scene = random_scene(rng, replace(opt, min_shapes=max(1, opt.min_shapes)))
    return (scene, rng.choice(scene.shapes)) if scene.shapes else None


def _bg_spec(scene: Scene) -> dict[str, object]:
    bg = scene.background
    return {"kind": bg.kind, "colors": list(bg.colors), "direction": bg.direction, "period": bg.period}


def make_remove(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None:
        return None
    scene, gone = picked
    en, cn = phrase("remove", rng, **_obj(gone), **_pos(gone.cell))
    spec = base_spec("remove", "remove", opt.size, changed_region(opt.size, gone),
                     before=shape_spec(gone, opt.size), background=_bg_spec(scene))
    return EditPlan("remove", "remove", (scene,), scene.without(gone), en, cn, spec)


def make_replace(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None:
        return None
    scene, old = picked
    kind = rng.choice([k for k in sorted(SHAPE_KINDS) if k != old.kind])
    color = old.color if rng.random() < 0.5 else rng.choice(sorted(OBJECT_COLORS))
    new = replace(old, kind=kind, color=color)
    if (new.kind, new.color) in _taken(scene):
        return None
    en, cn = phrase("replace", rng, **_obj(old), **_pos(old.cell), new=describe(new)[0], new_cn=describe(new)[1])
    spec = base_spec("replace", "replace", opt.size, changed_region(opt.size, old, new),
                     before=shape_spec(old, opt.size), after=shape_spec(new, opt.size), background=_bg_spec(scene))
    return EditPlan("replace", "replace", (scene,), scene.swapped(old, new), en, cn, spec)


def make_recolor(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None:
        return None
    scene, old = picked
    new = replace(old, color=rng.choice([c for c in sorted(OBJECT_COLORS) if c != old.color]))
    if (new.kind, new.color) in _taken(scene):
        return None
    color = OBJECT_COLORS[new.color]
    en, cn = phrase("recolor", rng, **_obj(old), **_pos(old.cell), color=color.en, color_cn=color.cn)
    spec = base_spec("color", "recolor", opt.size, changed_region(opt.size, old),
                     before=shape_spec(old, opt.size), after=shape_spec(new, opt.size))
    return EditPlan("color", "recolor", (scene,), scene.swapped(old, new), en, cn, spec)


def make_move(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None or not picked[0].free_cells():
        return None
    scene, old = picked
    new = replace(old, cell=rng.choice(scene.free_cells()))
    en, cn = phrase("move", rng, **_obj(old), **_pos(new.cell), src=POSITIONS[old.cell].en,
                    src_cn=POSITIONS[old.cell].cn)
    spec = base_spec("compose", "move", opt.size, changed_region(opt.size, old, new),
                     before=shape_spec(old, opt.size), after=shape_spec(new, opt.size), background=_bg_spec(scene))
    return EditPlan("compose", "move", (scene,), scene.swapped(old, new), en, cn, spec)


def make_resize(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None:
        return None
    scene, old = picked
    step = rng.choice((-1, 1))
    index = _SIZE_ORDER.index(old.size) + step
    if not 0 <= index < len(_SIZE_ORDER):
        step, index = -step, index - 2 * step  # the largest can only shrink, the smallest only grow
    new = replace(old, size=_SIZE_ORDER[index])
    words = ("bigger", "larger", "Enlarge", "大", "放大") if step > 0 else ("smaller", "smaller", "Shrink", "小", "缩小")
    en, cn = phrase("resize", rng, **_obj(old), **_pos(old.cell), bigger=rng.choice(words[:2]), grow=words[2],
                    bigger_cn=words[3], grow_cn=words[4])
    spec = base_spec("adjust", "resize", opt.size, changed_region(opt.size, old, new),
                     before=shape_spec(old, opt.size), after=shape_spec(new, opt.size), background=_bg_spec(scene))
    return EditPlan("adjust", "resize", (scene,), scene.swapped(old, new), en, cn, spec)


def make_extract(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    picked = _pick_shape(rng, opt)
    if picked is None:
        return None
    scene, kept = picked
    canvas = Background("canvas", (CANVAS.key, CANVAS.key), "horizontal", scene.background.period)
    en, cn = phrase("extract", rng, **_obj(kept), **_pos(kept.cell))
    spec = base_spec("extract", "extract", opt.size, None, after=shape_spec(kept, opt.size),
                     canvas_rgb=list(CANVAS.rgb))
    return EditPlan("extract", "extract", (scene,), Scene(opt.size, canvas, (kept,)), en, cn, spec)


# ---------------------------------------------------------------------------------------- background, text

def make_background(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    scene = random_scene(rng, opt)
    new_bg = random_background(rng, opt.size, opt, avoid=scene.background)
    bg_en, bg_cn = background_phrase(new_bg)
    en, cn = phrase("background", rng, bg=bg_en, bg_cn=bg_cn)
    target = replace(scene, background=new_bg)
    spec = base_spec("background", "background", opt.size, None, background=_bg_spec(target),
                     shapes=[shape_spec(s, opt.size) for s in scene.shapes],
                     text=text_spec(scene.text, opt.size) if scene.text else None)
    return EditPlan("background", "background", (scene,), target, en, cn, spec)


def _ink_iou(a: TextItem, b: TextItem, size: int) -> float:
    ma, mb = text_mask(a, size), text_mask(b, size)
    return float(np.logical_and(ma, mb).sum() / max(1, np.logical_or(ma, mb).sum()))


def make_text_replace(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    scene = random_scene(rng, opt, with_text=True)
    assert scene.text is not None
    old = scene.text
    new = replace(old, word=random_word(rng, opt.size, avoid=old.word))
    if _ink_iou(old, new, opt.size) > 0.5:  # too alike to tell apart by pixels (e.g. CAT -> CAR)
        return None
    en, cn = phrase("text_replace", rng, old=old.word, word=new.word)
    spec = base_spec("text", "text_replace", opt.size, changed_region(opt.size, old, new),
                     before=text_spec(old, opt.size), after=text_spec(new, opt.size), background=_bg_spec(scene))
    return EditPlan("text", "text_replace", (scene,), replace(scene, text=new), en, cn, spec)


def make_text_write(rng: random.Random, opt: SceneOptions) -> EditPlan | None:
    scene = random_scene(rng, opt, with_text=False)
    rows = [r for r in range(3) if not any(scene.shape_at(c) for c in (3 * r, 3 * r + 1, 3 * r + 2))]
    if not rows:
        return None
    text = TextItem(random_word(rng, opt.size), rng.choice(sorted(OBJECT_COLORS)), rng.choice(rows))
    color = OBJECT_COLORS[text.color]
    en, cn = phrase("text_write", rng, word=text.word, color=color.en, color_cn=color.cn, row=ROWS[text.row].en,
                    row_cn=ROWS[text.row].cn)
    spec = base_spec("text", "text_write", opt.size, changed_region(opt.size, text), after=text_spec(text, opt.size),
                     background=_bg_spec(scene))
    return EditPlan("text", "text_write", (scene,), replace(scene, text=text), en, cn, spec)


SCENE_MAKERS: dict[str, Maker] = {
    "draw": make_draw, "add": make_add, "remove": make_remove, "replace": make_replace, "recolor": make_recolor,
    "background": make_background, "move": make_move, "insert": make_insert, "resize": make_resize,
    "text_replace": make_text_replace, "text_write": make_text_write, "extract": make_extract,
}
