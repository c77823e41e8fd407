"""Shared test settings: offline, deterministic, and modest with the 2 cores CI has."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def recipes_dir() -> Path:
    """The repository's ``recipes/`` folder (the embedded default model's training steps; not installed)."""
    return Path(__file__).resolve().parent.parent / "recipes"
