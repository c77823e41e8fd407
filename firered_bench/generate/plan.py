"""An edit before it is rendered: scenes, pixel ops, instructions and the machine-readable spec.

Edit makers (``edits_scene``, ``edits_pixel``) return an ``EditPlan``; the generator fingerprints it (to keep the
held-out split disjoint from training) and only then renders it, so rejected plans cost no pixels.

- ``sources``: the scenes of Picture 1, Picture 2 ... (empty for text-to-image);
- ``target``: the scene the target is rendered from;
- ``source_op`` / ``target_op``: an optional ``(name, params)`` pixel op applied after rendering - a degradation
  on the sources for low-level edits, the edit itself for brightness, mirror, posterize ...

The spec (``spec``) is plain JSON and is what success checks read: ``task``, ``op``, ``size``, ``regions``
(boxes [x0, y0, x1, y1] where change is allowed, or null when the whole image may change), and op-specific keys
such as ``before`` / ``after`` (the shapes involved, with their ``rgb`` and ``bbox``), ``background``, ``text``,
``params`` or ``clean_scene``; the generator adds ``fingerprint``.

Public API: ``EditPlan``, ``render_plan``, ``shape_spec``, ``text_spec``, ``changed_region``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..scenes.palette import color_rgb
from ..scenes.pixel_ops import Params, apply_op
from ..scenes.render import mask_box, render_scene, shape_mask, text_mask
from ..scenes.scene import Scene, Shape, TextItem, pad_box

Spec = dict[str, Any]

# Change is allowed this many pixels around the edited objects: edges of a model's output are rarely exact.
REGION_PAD = 2


@dataclass(frozen=True)
class EditPlan:
    """Everything needed to render one sample, plus its texts and spec."""

    task: str  # REDEdit-Bench-style category: add, remove, ..., or t2i
    op: str  # the precise edit within the category: recolor, move, insert, mirror ...
    sources: tuple[Scene, ...]
    target: Scene
    instruction: str
    instruction_cn: str
    spec: Spec = field(default_factory=dict)
    source_op: tuple[str, Params] | None = None
    target_op: tuple[str, Params] | None = None

    def fingerprint(self) -> str:
        """Hash of what the sample shows (scenes, ops), not of how it is phrased."""
        content = {"op": self.op, "sources": [s.to_dict() for s in self.sources], "target": self.target.to_dict(),
                   "source_op": self.source_op, "target_op": self.target_op}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def render_plan(plan: EditPlan) -> tuple[list[Image.Image], Image.Image]:
    """(source images, target image) of a plan."""
    sources = [render_scene(s) for s in plan.sources]
    if plan.source_op is not None:
        sources = [apply_op(plan.source_op[0], img, plan.source_op[1]) for img in sources]
    target = render_scene(plan.target)
    if plan.target_op is not None:
        target = apply_op(plan.target_op[0], target, plan.target_op[1])
    return sources, target


def shape_spec(shape: Shape, size: int) -> Spec:
    """A shape as the spec records it: its description plus expected colour and pixel box."""
    return {"kind": shape.kind, "color": shape.color, "cell": shape.cell, "size": shape.size,
            "rgb": list(color_rgb(shape.color)), "bbox": list(mask_box(shape_mask(shape, size)) or ())}


def text_spec(text: TextItem, size: int) -> Spec:
    return {"word": text.word, "color": text.color, "row": text.row, "rgb": list(color_rgb(text.color)),
            "bbox": list(mask_box(text_mask(text, size)) or ())}


def changed_region(size: int, *items: Shape | TextItem | None) -> list[list[int]]:
    """Padded boxes, one per given shape / word: where an edit may change pixels.

    One box per object rather than their union, so moving a shape across the canvas does not license changes
    everywhere in between.
    """
    boxes: list[list[int]] = []
    for item in items:
        if item is None:
            continue
        mask = shape_mask(item, size) if isinstance(item, Shape) else text_mask(item, size)
        box = mask_box(mask)
        if box is not None:
            boxes.append(list(pad_box(box, REGION_PAD, size)))
    if not boxes:
        raise ValueError("an edit region needs at least one non-empty object")
    return boxes


def base_spec(task: str, op: str, size: int, regions: list[list[int]] | None, **extra: Any) -> Spec:
    return {"task": task, "op": op, "size": size, "regions": regions, **extra}
