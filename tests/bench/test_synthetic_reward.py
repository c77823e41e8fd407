"""Verifiable rewards from the benchmark's checks: hand-made verdicts, and real generated edits."""

from __future__ import annotations

import math

import pytest

from firered_bench import TASK_OPS, generate
from firered_bench.grade.checks import CheckResult
from firered_bench.grade.reward import check_reward, verifiable_rewards

N_TASKS = len(TASK_OPS)


def _verdict(values: dict[str, float], bars: dict[str, float]) -> CheckResult:
    missed = tuple(name for name, bar in bars.items() if not values[name] >= bar)
    return CheckResult(not missed, "add", "add", tuple(f"{m} missed" for m in missed), dict(values), missed,
                       dict(bars))


def test_the_three_modes_on_a_hand_made_verdict() -> None:
    verdict = _verdict({"object_color": 0.4, "unchanged_outside": 0.99}, {"object_color": 0.8,
                                                                           "unchanged_outside": 0.97})
    assert check_reward(verdict, "pass") == 0.0
    assert check_reward(verdict, "fraction") == 0.5  # one of two criteria passed
    assert check_reward(verdict, "graded") == pytest.approx((0.4 / 0.8 + 1.0) / 2)  # 0.75: a passed one counts 1


def test_graded_caps_each_criterion_and_fails_nan_and_non_positive_bars() -> None:
    verdict = _verdict({"psnr_db": 40.0, "gain": float("nan"), "delta": -1.0, "same_db": float("inf")},
                       {"psnr_db": 28.0, "gain": 3.0, "delta": 0.0, "same_db": 28.0})
    assert check_reward(verdict, "graded") == pytest.approx((1.0 + 0.0 + 0.0 + 1.0) / 4)
    assert check_reward(verdict, "fraction") == pytest.approx(2 / 4)


def test_a_result_of_the_wrong_size_scores_zero_and_bad_modes_are_refused() -> None:
    wrong = CheckResult(False, "add", "add", ("result is 8x8",), missed=("size",))
    assert all(check_reward(wrong, mode) == 0.0 for mode in ("pass", "fraction", "graded"))
    with pytest.raises(ValueError, match="mode must be one of pass, fraction, graded"):
        check_reward(wrong, "best")
    with pytest.raises(ValueError, match="one entry per edit"):
        verifiable_rewards([[]], [], [{}])


def test_exact_targets_earn_full_reward_and_unedited_sources_less() -> None:
    samples = [s for s in generate("heldout", N_TASKS, seed=5) if s.sources]
    sources = [list(s.sources) for s in samples]
    specs = [s.spec for s in samples]
    for mode in ("pass", "fraction", "graded"):
        assert verifiable_rewards(sources, [s.target for s in samples], specs, mode) == [1.0] * len(samples)
    unedited = verifiable_rewards(sources, [s.sources[0] for s in samples], specs, "graded")
    assert all(0.0 <= r < 1.0 for r in unedited), unedited  # every edit asks for a change the source lacks
    fraction = verifiable_rewards(sources, [s.sources[0] for s in samples], specs, "fraction")
    assert all(f <= 1.0 and not math.isnan(f) for f in fraction)
    assert sum(fraction) < len(samples)


def test_closer_to_target_is_the_benchmarks_closer_than_the_source_per_result() -> None:
    import numpy as np
    from PIL import Image

    from firered_bench.grade.reward import closer_to_target

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    target = source.copy()
    target[4:12, 4:12] = (200, 30, 30)
    halfway = ((source.astype(np.float64) + target) / 2).round().astype(np.uint8)
    worse = 255 - target
    pictures = [Image.fromarray(a) for a in (target, source, halfway, worse)]
    assert closer_to_target(pictures[1], pictures, pictures[0]) == [1.0, 0.0, 1.0, 0.0]  # the source ties: not closer
    assert closer_to_target(pictures[1], [pictures[0].resize((8, 8))], pictures[0]) == [0.0]
    with pytest.raises(ValueError, match="source is 8x8 but target is 16x16"):
        closer_to_target(pictures[1].resize((8, 8)), pictures, pictures[0])
