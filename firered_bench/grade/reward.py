"""Verifiable rewards: the benchmark's own success checks turned into a score an RL stage can learn from.

A synthetic sample carries the spec its check reads (``generate``), so a model's edit of it can be graded exactly,
without a judge model. Three ways to turn one ``CheckResult`` into a reward in [0, 1]:

| mode | reward | why |
|---|---|---|
| ``pass`` | 1 when every criterion passed, else 0 | the benchmark's own verdict; sparse |
| ``fraction`` | the share of the judged criteria that passed | partial credit (the colour right, the rest disturbed) |
| ``graded`` | the mean over criteria of ``clip(value / bar, 0, 1)`` | a signal even when no criterion passes yet |

A result of the wrong size scores 0 in every mode. ``closer_to_target`` is the benchmark's other guard as a term a
reward can add: whether a result is nearer (PSNR) to the sample's target than Picture 1 is - what keeps an RL stage
that is paid for passing from drifting away from the picture it was given.

Group-normalised RL (DiffusionNFT) only needs rewards that order the edits of one prompt, so ``graded`` gives it
the most to work with; ``pass`` matches the benchmark's figures.

Public API: ``REWARD_MODES``, ``check_reward``, ``closer_to_target``, ``verifiable_rewards``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .checks import CheckResult, CheckThresholds, check
from .metrics import ImageLike, finite_db, psnr, to_array

__all__ = ["REWARD_MODES", "check_reward", "closer_to_target", "verifiable_rewards"]

REWARD_MODES = ("pass", "fraction", "graded")


def _graded(value: float, bar: float) -> float:
    if math.isnan(value):  # written so that NaN fails, as in the checks; +inf (identical images) passes
        return 0.0
    if bar <= 0:  # a bar at or below zero has no scale to grade against: passed or not
        return 1.0 if value >= bar else 0.0
    return min(max(value / bar, 0.0), 1.0)


def check_reward(verdict: CheckResult, mode: str = "fraction") -> float:
    """The reward of one graded edit (see the module docstring)."""
    if mode not in REWARD_MODES:
        raise ValueError(f"mode must be one of {', '.join(REWARD_MODES)}, got {mode!r}")
    if "size" in verdict.missed:
        return 0.0
    if mode == "pass" or not verdict.bars:  # no criterion judged: the verdict is all there is
        return 1.0 if verdict.passed else 0.0
    if mode == "fraction":
        return 1.0 - len(set(verdict.missed)) / len(verdict.bars)
    return sum(_graded(verdict.metrics[name], bar) for name, bar in verdict.bars.items()) / len(verdict.bars)


def verifiable_rewards(sources: Sequence[Sequence[ImageLike]], results: Sequence[ImageLike],
                       specs: Sequence[dict[str, Any]], mode: str = "fraction",
                       thresholds: CheckThresholds = CheckThresholds()) -> list[float]:
    """Rewards of a batch of edits: ``results[i]`` made from ``sources[i]`` for the sample described by
    ``specs[i]``."""
    if not len(sources) == len(results) == len(specs):
        raise ValueError(f"sources, results and specs must have one entry per edit, got {len(sources)}, "
                         f"{len(results)} and {len(specs)}")
    return [check_reward(check(list(src), res, spec, thresholds=thresholds, scores=False), mode)
            for src, res, spec in zip(sources, results, specs)]


def closer_to_target(source: ImageLike, results: Sequence[ImageLike], target: ImageLike) -> list[float]:
    """1.0 for each result nearer (PSNR) to ``target`` than ``source`` is, else 0.0: the benchmark's
    closer-than-the-source figure, per result. A result whose size differs from the target's is not closer."""
    tgt = to_array(target)
    src = to_array(source)
    if src.shape != tgt.shape:
        raise ValueError(f"source is {src.shape[1]}x{src.shape[0]} but target is {tgt.shape[1]}x{tgt.shape[0]}")
    bar = finite_db(psnr(src, tgt))
    out = []
    for result in results:
        res = to_array(result)
        out.append(1.0 if res.shape == tgt.shape and finite_db(psnr(res, tgt)) > bar else 0.0)
    return out
