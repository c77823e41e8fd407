"""Success checks: each passes the exact target and fails the unedited source and wrong edits, for every op."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from PIL import Image

from firered_bench import TASK_OPS, check, generate, psnr, ssim
from firered_bench.grade.criteria import background_of, dilate, inside, spec_shape_mask, spec_text_mask
from firered_bench.scenes.pixel_ops import apply_op
from firered_bench.scenes.render import render_scene
from firered_bench.scenes.scene import scene_from_dict

ALL_OPS = sorted({op for ops in TASK_OPS.values() for op in ops})
PER_OP = 4


@pytest.fixture(scope="module")
def by_op() -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for s in generate("heldout", len(TASK_OPS) * 12, seed=7):
        if len(groups[s.op]) < PER_OP:
            groups[s.op].append(s)
    return groups


# ------------------------------------------------------------------------------------------- wrong edits

def _far_color(pixels: np.ndarray) -> np.ndarray:
    """Of a few extreme colours, the one furthest from the mean of ``pixels``."""
    candidates = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 255], [0, 255, 0]])
    mean = pixels.reshape(-1, 3).mean(axis=0)
    return candidates[np.abs(candidates - mean).max(axis=1).argmax()]


def _keep_out(spec: dict[str, Any]) -> np.ndarray:
    """Where a stray change would be legitimate (or invisible to the check): edit regions and objects."""
    size = spec["size"]
    mask = inside(spec["regions"], size) if spec["regions"] else np.zeros((size, size), dtype=bool)
    for s in spec.get("shapes") or []:
        mask |= spec_shape_mask(s, size)
    if spec.get("text"):
        mask |= spec_text_mask(spec["text"], size)
    if spec["op"] == "extract":
        mask |= spec_shape_mask(spec["after"], size)
    return dilate(mask, 2)


def blotch(img: Image.Image, spec: dict[str, Any]) -> Image.Image | None:
    """The image with a square of a far colour painted where nothing should change; None if there is no room."""
    a = np.asarray(img).copy()
    side = spec["size"] // 4
    free = ~_keep_out(spec)
    for y in range(0, spec["size"] - side + 1, 2):
        for x in range(0, spec["size"] - side + 1, 2):
            if free[y:y + side, x:x + side].all():
                a[y:y + side, x:x + side] = _far_color(a[y:y + side, x:x + side])
                return Image.fromarray(a)
    return None


def _repaint(img: Image.Image, mask: np.ndarray, rgb: list[int]) -> Image.Image:
    a = np.asarray(img).copy()
    a[mask] = _far_color(np.array(rgb, dtype=np.float64))
    return Image.fromarray(a)


_WRONG_PARAMS = {
    "brightness": lambda p: {**p, "factor": 2.2 - p["factor"]},  # brighter <-> darker
    "contrast": lambda p: {**p, "factor": 2.1 - p["factor"]},
    "mirror": lambda p: {"axis": "vertical" if p["axis"] == "horizontal" else "horizontal"},
    "rotate": lambda p: {"degrees": 270 if p["degrees"] == 90 else 90},
    "posterize": lambda p: {"bits": 3 - p["bits"]},  # 1 <-> 2 bits
}


def wrong_edit(s: Any) -> Image.Image:
    """A plausible but wrong result: right place, wrong content."""
    spec, size = s.spec, s.spec["size"]
    op = spec["op"]
    if op in ("add", "insert", "recolor", "replace", "move", "resize", "extract"):
        return _repaint(s.target, spec_shape_mask(spec["after"], size), spec["after"]["rgb"])
    if op == "remove":
        return _repaint(s.target, spec_shape_mask(spec["before"], size), spec["before"]["rgb"])
    if op == "draw":
        return _repaint(s.target, spec_shape_mask(spec["shapes"][0], size), spec["shapes"][0]["rgb"])
    if op in ("text_replace", "text_write"):
        return _repaint(s.target, spec_text_mask(spec["after"], size), spec["after"]["rgb"])
    if op == "background":  # new background, but it also swallowed the objects
        return Image.fromarray(background_of(spec))
    if op in _WRONG_PARAMS:
        params = dict(spec["params"])
        name = params.pop("name")
        return apply_op(name, s.sources[0], _WRONG_PARAMS[op](params))
    if op == "outline":
        return apply_op("posterize", s.sources[0], {"bits": 1})
    if op in ("denoise", "deblur", "brighten"):  # cleaned up, but with the exposure off
        return apply_op("brightness", render_scene(scene_from_dict(spec["clean_scene"])), {"factor": 0.8})
    raise AssertionError(f"no wrong edit for {op}")


def unedited(s: Any) -> Image.Image:
    if s.sources:
        return s.sources[0]
    return Image.fromarray(background_of(s.spec))  # text-to-image: an empty canvas of the asked background


# ------------------------------------------------------------------------------------------------ tests

def test_every_op_has_samples(by_op: dict[str, list[Any]]) -> None:
    assert sorted(by_op) == ALL_OPS
    assert all(len(v) >= 2 for v in by_op.values()), {k: len(v) for k, v in by_op.items()}


@pytest.mark.parametrize("op", ALL_OPS)
def test_check_passes_target_and_fails_source_and_wrong_edits(op: str, by_op: dict[str, list[Any]]) -> None:
    blotched = 0
    for s in by_op[op]:
        good = check(s.sources, s.target, s.spec, target=s.target)
        assert good.passed, (s.id, good.failures)
        assert good.metrics["psnr_to_target"] == math.inf and good.metrics["ssim_to_target"] == pytest.approx(1.0)
        same = check(s.sources, unedited(s), s.spec, target=s.target)
        assert not same.passed, (s.id, "unedited passed", same.metrics)
        wrong = check(s.sources, wrong_edit(s), s.spec)
        assert not wrong.passed, (s.id, "wrong edit passed", wrong.metrics)
        stray = blotch(s.target, s.spec)
        if stray is not None:
            blotched += 1
            verdict = check(s.sources, stray, s.spec)
            assert not verdict.passed, (s.id, "change outside the edit passed", verdict.metrics)
    assert blotched >= 1, f"no room to test a stray change for {op}"


def test_posterize_check_wants_the_asked_levels(by_op: dict[str, list[Any]]) -> None:
    for s in by_op["posterize"]:
        finer = apply_op("posterize", s.sources[0], {"bits": s.spec["params"]["bits"] + 1})
        assert not check(s.sources, finer, s.spec).passed


def test_check_reports_metrics_to_source_and_target(by_op: dict[str, list[Any]]) -> None:
    s = by_op["recolor"][0]
    r = check(s.sources, s.sources[0], s.spec, target=s.target)
    assert r.metrics["psnr_to_source"] == math.inf and r.metrics["psnr_to_target"] < 40
    assert 0 < r.metrics["ssim_to_target"] < 1
    assert r.failures and all("<" in f for f in r.failures)


def test_wrong_size_result_fails(by_op: dict[str, list[Any]]) -> None:
    s = by_op["add"][0]
    r = check(s.sources, s.target.resize((32, 32)), s.spec)
    assert not r.passed and "expected 64x64" in r.failures[0]


def test_psnr_and_ssim_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 246, size=(48, 48, 3)).astype(np.uint8)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    noisier = np.clip(a + rng.normal(0, 60, a.shape), 0, 255)
    assert 0 < ssim(a, noisier) < ssim(a, noisy) < 1
    assert ssim(a, 255 - a) < 0.1
    with pytest.raises(ValueError):
        psnr(a, a[:10])
