"""The seeded generator: ``generate(split, n, seed)`` yields synthetic edit samples with exact targets.

::

    from firered_bench import generate
    for sample in generate("train", 1000, seed=0):
        sample.sources, sample.target, sample.instruction, sample.instruction_cn, sample.spec

Tasks cycle in a fixed order (``TASK_OPS``), so any ``n`` gives balanced categories; within a task the op
(e.g. adjust = resize | brightness | contrast) is drawn at random.

Determinism and the held-out split:

- Sample ``i`` of ``(split, seed)`` draws from ``random.Random(f"{split}:{seed}:{i}")``; string seeds are hashed
  by Python itself (not ``hash()``), so every machine produces the same samples.
- A plan belongs to the held-out split iff its content fingerprint (scenes + ops, not the phrasing) falls in one
  of ``1 / holdout_modulus`` hash buckets; the train split rejects those plans and the held-out split rejects all
  others. So no held-out image pair ever appears in training, whatever seeds either side uses.
- A plan whose target would barely differ from its source (a mirror of a symmetric scene, a blur of an almost
  empty one, a circle replaced by a hexagon of the same colour) is rejected too: the generator runs the success
  check on every plan and keeps it only if the exact target passes and the unedited Picture 1 fails.

Public API: ``GeneratorConfig``, ``SyntheticSample``, ``generate``, ``TASK_OPS``, ``SPLITS``.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from .edits_pixel import PIXEL_MAKERS
from .edits_scene import SCENE_MAKERS, Maker
from ..grade.checks import check
from ..grade.metrics import psnr
from .plan import EditPlan, render_plan
from .scene_sampler import SceneOptions

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")

# REDEdit-Bench-style category -> the ops that realise it. "t2i" is the zero-source case.
TASK_OPS: dict[str, tuple[str, ...]] = {
    "t2i": ("draw",), "add": ("add",), "remove": ("remove",), "replace": ("replace",), "color": ("recolor",),
    "background": ("background",), "compose": ("move", "insert"), "adjust": ("resize", "brightness", "contrast"),
    "text": ("text_replace", "text_write"), "lowlevel": ("denoise", "deblur", "brighten"),
    "extract": ("extract",), "viewpoint": ("mirror", "rotate"), "stylize": ("posterize", "outline"),
}
MAKERS: dict[str, Maker] = {**SCENE_MAKERS, **PIXEL_MAKERS}


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate; the defaults are the shipped dataset."""

    scene: SceneOptions = field(default_factory=SceneOptions)
    tasks: tuple[str, ...] = tuple(TASK_OPS)  # categories to cycle through, in this order
    holdout_modulus: int = 10  # 1 in this many content buckets is held out
    min_change_db: float = 30.0  # reject plans whose target is closer than this (PSNR) to Picture 1
    max_attempts: int = 500  # plans tried per sample before giving up (held-out keeps ~1 in 10)
    self_check: bool = True  # keep only plans whose check passes the target and fails the unedited source

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_OPS]
        if unknown or not self.tasks:
            raise ValueError(f"unknown or no tasks {unknown}; choose from {sorted(TASK_OPS)}")
        if self.holdout_modulus < 2:
            raise ValueError("holdout_modulus must be at least 2")


@dataclass(frozen=True)
class SyntheticSample:
    """One generated edit with its images in memory and the spec the success checks read."""

    id: str
    task: str
    op: str
    sources: tuple[Image.Image, ...]
    target: Image.Image
    instruction: str
    instruction_cn: str
    spec: dict[str, Any]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)  # no optimizer: byte-identical output across runs
    return buf.getvalue()


def is_heldout(fingerprint: str, modulus: int) -> bool:
    return int(fingerprint[:12], 16) % modulus == 0


def _checkable(plan: EditPlan, sources: list[Image.Image], target: Image.Image) -> bool:
    """Whether the success check passes the exact target and fails "do nothing" (returning Picture 1)."""
    if not check(sources, target, plan.spec, scores=False).passed:
        log.warning("exact target of a %s plan fails its own check; plan skipped", plan.op)
        return False
    return not sources or not check(sources, sources[0], plan.spec, scores=False).passed


def _plan_one(rng: random.Random, task: str, split: str, config: GeneratorConfig,
              ) -> tuple[EditPlan, list[Image.Image], Image.Image]:
    for _ in range(config.max_attempts):
        plan = MAKERS[rng.choice(TASK_OPS[task])](rng, config.scene)
        if plan is None:
            continue
        fingerprint = plan.fingerprint()
        if is_heldout(fingerprint, config.holdout_modulus) != (split == "heldout"):
            continue
        sources, target = render_plan(plan)
        if sources and psnr(sources[0], target) > config.min_change_db:
            continue
        if config.self_check and not _checkable(plan, sources, target):
            continue
        plan.spec["fingerprint"] = fingerprint
        return plan, sources, target
    raise RuntimeError(f"no usable {task} plan in {config.max_attempts} attempts (split {split})")


def generate(split: str, n: int, seed: int = 0, config: GeneratorConfig = GeneratorConfig()
             ) -> Iterator[SyntheticSample]:
    """Yield ``n`` samples of ``split`` ("train" or "heldout"); the same arguments give the same samples."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for i in range(n):
        task = config.tasks[i % len(config.tasks)]
        rng = random.Random(f"{split}:{seed}:{i}")
        plan, sources, target = _plan_one(rng, task, split, config)
        yield SyntheticSample(id=f"syn-{split}-{seed}-{i:06d}", task=plan.task, op=plan.op, sources=tuple(sources),
                              target=target, instruction=plan.instruction, instruction_cn=plan.instruction_cn,
                              spec=plan.spec)
