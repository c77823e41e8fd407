"""Programmatic success checks: did the edit happen where and how it was asked, and nothing else change?

``check(sources, result, spec)`` reads the spec a generated sample carries and judges a result image (a model's
output, or the exact target as a sanity check) without looking at the target:

| op | passes when |
|---|---|
| add, insert | the new shape's pixels show its colour; outside the edit region the result matches Picture 1 |
| remove | the removed shape's pixels show the background; outside unchanged |
| replace, move, resize | the new shape shows its colour, pixels it vacated show background; outside unchanged |
| recolor | the shape's pixels show the new colour; outside unchanged |
| background | objects keep their pixels; everything around them is the new background |
| text_replace, text_write | the asked word's ink (its colour, its row) overlaps the expected ink; outside unchanged |
| extract | the shape shows its colour; everything else is white |
| draw (t2i) | every described shape shows its colour where described; the rest is the described background |
| brightness, contrast, mirror, rotate | close (PSNR) to the op applied to the source, closer to that than to the source |
| posterize, outline | the same; posterize must also use only the asked levels |
| denoise, deblur, brighten | close (PSNR) to the clean scene and clearly closer to it than the degraded source |

Every result also gets PSNR and SSIM to the source (Picture 1) and, when the target is passed, to the target;
these are reported, not part of the verdict. Thresholds are in ``CheckThresholds``. A verdict lists each failed
criterion twice: as a line with the measured value (``failures``) and by name (``missed``), for counting.

Public API: ``check``, ``CheckResult``, ``CheckThresholds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from . import criteria as C
from .metrics import ImageLike, finite_db, psnr, ssim, to_array
from ..scenes.pixel_ops import apply_op
from ..scenes.render import render_scene
from ..scenes.scene import scene_from_dict


@dataclass(frozen=True)
class CheckThresholds:
    """How close is close enough. Defaults leave room for a small model's soft edges, not for a wrong edit."""

    color_tol: int = 48  # per-channel levels for "this pixel shows that colour"
    object_fraction: float = 0.8  # share of a shape's pixels that must show its colour
    background_fraction: float = 0.8  # share of vacated pixels that must show the background
    unchanged_tol: int = 24  # per-channel levels for "this pixel did not change"
    unchanged_fraction: float = 0.97  # share of the pixels outside the edit region that must be unchanged
    text_iou: float = 0.7  # ink IoU of the asked word (the old word scores <= 0.5 by construction)
    transform_db: float = 28.0  # PSNR to the expected image of a whole-image op
    restore_gain_db: float = 3.0  # a restoration must beat the degraded source by this much
    min_pixels: int = 4  # vacated / gained areas smaller than this are not judged
    level_tol: int = 8  # posterize: how far a channel value may sit from one of the allowed levels


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    task: str
    op: str
    failures: tuple[str, ...] = ()  # one line per failed criterion, with the measured value
    metrics: dict[str, float] = field(default_factory=dict)
    missed: tuple[str, ...] = ()  # the names of the failed criteria ("size" for a result of the wrong size)
    bars: dict[str, float] = field(default_factory=dict)  # each judged criterion's bar; its value is in metrics


class _Judge:
    """Collects criteria for one result; each ``need`` records a failure when its value misses the bar."""

    def __init__(self, spec: dict[str, Any], sources: list[np.ndarray], result: np.ndarray, t: CheckThresholds):
        self.spec, self.sources, self.result, self.t = spec, sources, result, t
        self.size = int(spec["size"])
        self.failures: list[str] = []
        self.missed: list[str] = []
        self.values: dict[str, float] = {}
        self.bars: dict[str, float] = {}

    def need(self, name: str, value: float, bar: float) -> None:
        self.values[name], self.bars[name] = value, bar
        if not value >= bar:  # written so that NaN fails
            self.failures.append(f"{name}={value:.3f} < {bar:.3f}")
            self.missed.append(name)

    def unchanged_outside(self) -> None:
        mask = C.outside(self.spec["regions"], self.size)
        self.need("unchanged_outside", C.match_fraction(self.result, self.sources[0], mask, self.t.unchanged_tol),
                  self.t.unchanged_fraction)

    def shows(self, name: str, mask: np.ndarray, rgb: Sequence[int]) -> None:
        self.need(name, C.color_fraction(self.result, mask, rgb, self.t.color_tol), self.t.object_fraction)

    def shows_background(self, name: str, mask: np.ndarray) -> None:
        if mask.sum() >= self.t.min_pixels:
            self.need(name, C.match_fraction(self.result, C.background_of(self.spec), mask, self.t.color_tol),
                      self.t.background_fraction)


# ---------------------------------------------------------------------------------------------- by op

def _add(j: _Judge) -> None:
    j.unchanged_outside()
    j.shows("object_color", C.spec_shape_mask(j.spec["after"], j.size), j.spec["after"]["rgb"])


def _remove(j: _Judge) -> None:
    j.unchanged_outside()
    j.shows_background("vacated_is_background", C.spec_shape_mask(j.spec["before"], j.size))


def _reshape(j: _Judge) -> None:
    """replace, move, resize: a shape's pixels change from one mask to another."""
    before, after = C.spec_shape_mask(j.spec["before"], j.size), C.spec_shape_mask(j.spec["after"], j.size)
    j.unchanged_outside()
    j.shows("object_color", after, j.spec["after"]["rgb"])
    gained = after & ~before
    if gained.sum() >= j.t.min_pixels:
        j.shows("gained_color", gained, j.spec["after"]["rgb"])
    j.shows_background("vacated_is_background", before & ~C.dilate(after))


def _recolor(j: _Judge) -> None:
    j.unchanged_outside()
    j.shows("object_color", C.spec_shape_mask(j.spec["after"], j.size), j.spec["after"]["rgb"])


def _objects_mask(j: _Judge) -> np.ndarray:
    mask = np.zeros((j.size, j.size), dtype=bool)
    for s in j.spec.get("shapes", []):
        mask |= C.spec_shape_mask(s, j.size)
    if j.spec.get("text"):
        mask |= C.spec_text_mask(j.spec["text"], j.size)
    return mask


def _background(j: _Judge) -> None:
    objects = _objects_mask(j)
    j.need("objects_kept", C.match_fraction(j.result, j.sources[0], objects, j.t.unchanged_tol), j.t.object_fraction)
    around = ~C.dilate(objects)
    j.need("new_background", C.match_fraction(j.result, C.background_of(j.spec), around, j.t.unchanged_tol),
           j.t.unchanged_fraction)


def _draw(j: _Judge) -> None:
    for i, s in enumerate(j.spec["shapes"]):
        j.shows(f"shape{i}_color", C.spec_shape_mask(s, j.size), s["rgb"])
    around = ~C.dilate(_objects_mask(j))
    j.need("background", C.match_fraction(j.result, C.background_of(j.spec), around, j.t.unchanged_tol),
           j.t.unchanged_fraction)


def _text(j: _Judge) -> None:
    after = j.spec["after"]
    j.unchanged_outside()
    j.need("text_iou", C.ink_iou(j.result, C.spec_text_mask(after, j.size), after["rgb"], j.spec["regions"],
                                 j.t.color_tol), j.t.text_iou)


def _extract(j: _Judge) -> None:
    mask = C.spec_shape_mask(j.spec["after"], j.size)
    j.shows("object_color", mask, j.spec["after"]["rgb"])
    j.need("blank_canvas", C.color_fraction(j.result, ~C.dilate(mask), j.spec["canvas_rgb"], j.t.unchanged_tol),
           j.t.unchanged_fraction)


def _transform(j: _Judge) -> None:
    params = dict(j.spec["params"])
    expected = to_array(apply_op(params.pop("name"), Image.fromarray(j.sources[0].astype(np.uint8)), params))
    to_expected, to_source = psnr(j.result, expected), psnr(j.result, j.sources[0])
    j.need("psnr_to_expected", to_expected, j.t.transform_db)
    j.need("expected_minus_source_db", finite_db(to_expected) - finite_db(to_source), 1e-9)


def _posterize(j: _Judge) -> None:
    """Like any transform, and the result must really use only the few levels asked for (not just look close)."""
    _transform(j)
    step = 256 // 2 ** int(j.spec["params"]["bits"])
    offset = np.minimum(j.result % step, step - j.result % step)  # distance to the nearest allowed level
    j.need("on_levels", float((offset <= j.t.level_tol).mean()), j.t.unchanged_fraction)


def _restore(j: _Judge) -> None:
    clean = to_array(render_scene(scene_from_dict(j.spec["clean_scene"])))
    to_clean, source_to_clean = psnr(j.result, clean), psnr(j.sources[0], clean)
    j.need("psnr_to_clean", to_clean, j.t.transform_db)
    j.need("gain_db", finite_db(to_clean) - finite_db(source_to_clean), j.t.restore_gain_db)



_BY_OP: dict[str, Callable[[_Judge], None]] = {
    "add": _add, "insert": _add, "remove": _remove, "replace": _reshape, "move": _reshape, "resize": _reshape,
    "recolor": _recolor, "background": _background, "draw": _draw, "text_replace": _text, "text_write": _text,
    "extract": _extract, "brightness": _transform, "contrast": _transform, "mirror": _transform,
    "rotate": _transform, "posterize": _posterize, "outline": _transform, "denoise": _restore,
    "deblur": _restore, "brighten": _restore,
}


def _scores(result: np.ndarray, sources: list[np.ndarray], target: np.ndarray | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if target is not None:
        out["psnr_to_target"], out["ssim_to_target"] = psnr(result, target), ssim(result, target)
    if sources:
        out["psnr_to_source"], out["ssim_to_source"] = psnr(result, sources[0]), ssim(result, sources[0])
    return out


def check(sources: Sequence[ImageLike], result: ImageLike, spec: dict[str, Any], target: ImageLike | None = None,
          thresholds: CheckThresholds = CheckThresholds(), scores: bool = True) -> CheckResult:
    """Judge ``result`` against the edit described by ``spec``.

    ``target`` only adds PSNR/SSIM to the target to the report; ``scores=False`` skips PSNR/SSIM altogether (the
    verdict does not use them), which is what the generator's self-check does.
    """
    op, task = spec["op"], spec["task"]
    src = [to_array(s) for s in sources]
    res = to_array(result)
    tgt = to_array(target) if target is not None else None
    size = int(spec["size"])
    if res.shape != (size, size, 3) or any(s.shape != (size, size, 3) for s in src):
        return CheckResult(False, task, op, (f"result is {res.shape[1]}x{res.shape[0]}, expected {size}x{size}",),
                           missed=("size",))
    if op not in _BY_OP:
        raise ValueError(f"no success check for op {op!r}")
    judge = _Judge(spec, src, res, thresholds)
    _BY_OP[op](judge)
    metrics = dict(judge.values)
    if scores:
        metrics.update(_scores(res, src, tgt if tgt is not None and tgt.shape == res.shape else None))
    return CheckResult(not judge.failures, task, op, tuple(judge.failures), metrics, tuple(judge.missed),
                       dict(judge.bars))
