"""The embedded default model's recipes (``recipes/``, beside the package): every step loads and validates through
the trainer's own config loader, builds on at most the step before it, and its README says how to run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from firered_train.config import TrainConfig, load_config

RECIPES = ("default_model", "default_model_quick")


def _steps(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_step_loads_and_builds_on_at_most_the_step_before(recipes_dir: Path, recipe: str) -> None:
    steps = _steps(recipes_dir / recipe)
    assert steps, f"no steps in recipes/{recipe}"
    for previous, step in zip([None, *steps], steps):
        assert re.fullmatch(r"\d\d[a-z]?_\w+\.yaml", step.name), step.name  # numbered in the order they ran
        assert isinstance(load_config(step), TrainConfig)
        base = yaml.safe_load(step.read_text(encoding="utf-8")).get("base")
        if base is not None:
            assert previous is not None and (step.parent / base).resolve() == previous.resolve(), \
                f"{step.name}: base {base!r} is not the step before it"


@pytest.mark.parametrize("recipe", RECIPES)
def test_readme_runs_every_step(recipes_dir: Path, recipe: str) -> None:
    readme = (recipes_dir / recipe / "README.md").read_text(encoding="utf-8")
    for step in _steps(recipes_dir / recipe):
        assert f"firered -v train recipes/{recipe}/{step.name}" in readme, step.name

