"""Stochastic sampling on the embedded default model: the shipped scheduler turns it on, a seed still fixes the
result, and the benchmark can switch it either way and says which it ran."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from firered_core.default import is_available, load_default_pipeline
from firered_bench import generate
from firered_bench.generate.generator import GeneratorConfig

from ..edit_cli import edit_with_each

pytestmark = pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")


def _color_edit():  # noqa: ANN202 - the generator's sample type
    """One held-out recolour edit: a local change the model makes, so the sampler's effect shows in pixels."""
    return next(iter(generate("heldout", 1, seed=3, config=GeneratorConfig(tasks=("color",)))))


def _edit(pipe, sample, seed: int, **options: object) -> np.ndarray:  # noqa: ANN001 - pipeline, generator sample
    result = pipe.edit(list(sample.sources), sample.instruction, steps=8, true_cfg_scale=1.0, seed=seed,
                       keep_unedited=False, **options)
    return np.asarray(result.image)


def test_the_shipped_scheduler_samples_stochastically_and_a_seed_still_fixes_the_result() -> None:
    pipe = load_default_pipeline()
    assert pipe.scheduler_config.stochastic_sampling is True
    sample = _color_edit()
    first, again, other = _edit(pipe, sample, 0), _edit(pipe, sample, 0), _edit(pipe, sample, 1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    euler = _edit(pipe, sample, 0, sampler="euler")  # this call only
    assert not np.array_equal(first, euler) and pipe.scheduler_config.stochastic_sampling is True
    for bad in ("ddim", True):
        with pytest.raises(ValueError, match="sampler must be None or one of euler, stochastic"):
            _edit(pipe, sample, 0, sampler=bad)
    assert np.array_equal(_edit(pipe, sample, 0, sampler="stochastic"), first)
    assert np.array_equal(_edit(pipe, sample, 0), first)  # the override did not stick
    assert [pipe.sampler_choice(c) for c in (None, "stochastic", "euler")] == ["stochastic", "stochastic", "euler"]
    for choice, expected in ((None, "stochastic"), ("euler", "euler")):
        result = pipe.edit(list(sample.sources), sample.instruction, steps=2, true_cfg_scale=1.0, seed=0,
                           sampler=choice)
        assert result.sampler == expected  # what ran, as the CLI's metadata reports it


def test_the_benchmark_switch_and_its_settings_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firered_bench.evaluate.bench import register_bench

    parser = argparse.ArgumentParser()
    run = register_bench(parser)
    for flags, word, expected in ((["--sampler", "stochastic"], "stochastic", "stochastic"),
                                  (["--sampler", "euler"], "Euler", "euler")):
        out = tmp_path / word
        assert run(parser.parse_args(["synthetic", "--per-category", "1", "--steps", "4", "--out", str(out),
                                      *flags])) == 0
        assert json.loads((out / "results.json").read_text())["summary"]["sampler"] == expected
        assert f"Settings: 4 {word} steps," in capsys.readouterr().out


def test_the_edit_command_switch_and_the_written_metadata(tmp_path: Path) -> None:
    sample = _color_edit()
    seen = edit_with_each(sample, tmp_path, ("--sampler=stochastic", "--sampler=euler"), "sampler")
    assert seen["--sampler=stochastic"][0] == "stochastic" and seen["--sampler=euler"][0] == "euler"
    assert not np.array_equal(seen["--sampler=stochastic"][1], seen["--sampler=euler"][1])


@pytest.mark.parametrize("sampler, cfg", [("stochastic", 1.0), ("euler", 2.5)])
def test_seeds_sampled_in_one_batch_are_the_edits_each_seed_gives_alone(sampler: str, cfg: float) -> None:
    """``edit_seeds``: the instruction and references encoded once, the seeds sampled as one batch; result ``i``
    is ``edit(seed=seeds[i])`` (its own starting and step noise) up to batched rounding, Picture 1 kept as alone."""
    pipe = load_default_pipeline()
    sample = _color_edit()
    seeds = (0, 7, 3)
    batch = pipe.edit_seeds(list(sample.sources), sample.instruction, seeds=seeds, steps=6, true_cfg_scale=cfg,
                            sampler=sampler)
    assert [r.seed for r in batch] == list(seeds)
    for result, seed in zip(batch, seeds):
        alone = pipe.edit(list(sample.sources), sample.instruction, steps=6, true_cfg_scale=cfg, seed=seed,
                          sampler=sampler)
        assert result.latents.shape == alone.latents.shape == (1, *alone.latents.shape[1:])
        assert (result.latents - alone.latents).abs().max() < 1e-4
        diff = np.abs(np.asarray(result.image, dtype=int) - np.asarray(alone.image, dtype=int))
        assert diff.max() <= 1, seed
        assert (result.keep_unedited, result.sampler) == (alone.keep_unedited, alone.sampler)
    assert not np.array_equal(np.asarray(batch[0].image), np.asarray(batch[1].image))
    for bad, message in (((), "non-empty sequence"), (5, "non-empty sequence"), ((0, -1), "seed must be an integer")):
        with pytest.raises(ValueError, match=message):
            pipe.edit_seeds(list(sample.sources), sample.instruction, seeds=bad)
