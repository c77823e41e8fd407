"""Edits that are whole-image pixel operations on a rendered scene.

| op | task | target | source |
|---|---|---|---|
| brightness | adjust | brighter (x1.4) or darker (x0.6) | the scene |
| contrast | adjust | more (x1.6) or less (x0.5) contrast | the scene |
| denoise / deblur / brighten | lowlevel | the clean scene | the scene with noise / blur / underexposure |
| mirror | viewpoint | flipped left-right or upside down | the scene |
| rotate | viewpoint | rotated 90, 180 or 270 degrees | the scene |
| posterize | stylize | 1 or 2 bits per channel | the scene |
| outline | stylize | black edges on white | the scene |

Factors are fixed per wording ("brighter" is always x1.4) so an instruction determines its target; only the
strength of a degradation varies, since the restored image does not depend on it.

The spec records the op and its parameters (``params``); low-level specs also carry the clean scene
(``clean_scene``) so a check can render what the restoration should look like.

Public API: ``PIXEL_MAKERS``.
"""

from __future__ import annotations

import random
from typing import Any

from .phrasing import phrase
from .plan import EditPlan, base_spec
from .scene_sampler import SceneOptions, random_scene
from .edits_scene import Maker

BRIGHTER, DARKER = 1.4, 0.6
MORE_CONTRAST, LESS_CONTRAST = 1.6, 0.5


def _pixel_plan(task: str, op: str, rng: random.Random, opt: SceneOptions, name: str, params: dict[str, Any],
                slots: dict[str, str], degrade: bool = False) -> EditPlan:
    """A plan whose source is a random scene and whose target is that scene with a pixel op (or the reverse)."""
    scene = random_scene(rng, opt)
    en, cn = phrase(op, rng, **slots)
    spec = base_spec(task, op, opt.size, None, params={"name": name, **params})
    if degrade:
        spec["clean_scene"] = scene.to_dict()
        return EditPlan(task, op, (scene,), scene, en, cn, spec, source_op=(name, params))
    return EditPlan(task, op, (scene,), scene, en, cn, spec, target_op=(name, params))


def make_brightness(rng: random.Random, opt: SceneOptions) -> EditPlan:
    up = rng.random() < 0.5
    slots = ({"brighter": rng.choice(("brighter", "lighter")), "brighten": rng.choice(("Brighten", "Lighten")),
              "brighter_cn": "亮一些", "brighten_cn": "调亮"} if up else
             {"brighter": "darker", "brighten": "Darken", "brighter_cn": "暗一些", "brighten_cn": "调暗"})
    return _pixel_plan("adjust", "brightness", rng, opt, "brightness", {"factor": BRIGHTER if up else DARKER}, slots)


def make_contrast(rng: random.Random, opt: SceneOptions) -> EditPlan:
    up = rng.random() < 0.5
    slots = ({"raise": rng.choice(("increase", "raise", "boost")), "more": rng.choice(("more", "higher", "stronger")),
              "raise_cn": "提高", "more_cn": "高"} if up else
             {"raise": rng.choice(("decrease", "lower", "reduce")), "more": rng.choice(("less", "lower", "weaker")),
              "raise_cn": "降低", "more_cn": "低"})
    return _pixel_plan("adjust", "contrast", rng, opt, "contrast",
                       {"factor": MORE_CONTRAST if up else LESS_CONTRAST}, slots)


def make_denoise(rng: random.Random, opt: SceneOptions) -> EditPlan:
    params = {"sigma": round(rng.uniform(15.0, 30.0), 1), "seed": rng.randrange(2**31)}
    return _pixel_plan("lowlevel", "denoise", rng, opt, "noise", params, {}, degrade=True)


def make_deblur(rng: random.Random, opt: SceneOptions) -> EditPlan:
    params = {"radius": round(rng.uniform(1.2, 2.2) * opt.size / 64, 2)}
    return _pixel_plan("lowlevel", "deblur", rng, opt, "blur", params, {}, degrade=True)


def make_brighten(rng: random.Random, opt: SceneOptions) -> EditPlan:
    params = {"factor": round(rng.uniform(0.3, 0.55), 2)}
    return _pixel_plan("lowlevel", "brighten", rng, opt, "darken", params, {}, degrade=True)


def make_mirror(rng: random.Random, opt: SceneOptions) -> EditPlan:
    axis = rng.choice(("horizontal", "vertical"))
    slots = ({"axis": rng.choice(("horizontally", "left to right")), "axis_cn": "水平"} if axis == "horizontal"
             else {"axis": rng.choice(("vertically", "upside down")), "axis_cn": "垂直"})
    return _pixel_plan("viewpoint", "mirror", rng, opt, "mirror", {"axis": axis}, slots)


_ANGLES = {90: ("90 degrees counterclockwise", "逆时针旋转90度"), 180: ("180 degrees", "旋转180度"),
           270: ("90 degrees clockwise", "顺时针旋转90度")}


def make_rotate(rng: random.Random, opt: SceneOptions) -> EditPlan:
    degrees = rng.choice(sorted(_ANGLES))
    en, cn = _ANGLES[degrees]
    return _pixel_plan("viewpoint", "rotate", rng, opt, "rotate", {"degrees": degrees}, {"angle": en, "angle_cn": cn})


def make_posterize(rng: random.Random, opt: SceneOptions) -> EditPlan:
    bits = rng.choice((1, 2))
    return _pixel_plan("stylize", "posterize", rng, opt, "posterize", {"bits": bits}, {"levels": str(2**bits)})


def make_outline(rng: random.Random, opt: SceneOptions) -> EditPlan:
    return _pixel_plan("stylize", "outline", rng, opt, "outline", {}, {})


PIXEL_MAKERS: dict[str, Maker] = {
    "brightness": make_brightness, "contrast": make_contrast, "denoise": make_denoise, "deblur": make_deblur,
    "brighten": make_brighten, "mirror": make_mirror, "rotate": make_rotate, "posterize": make_posterize,
    "outline": make_outline,
}
