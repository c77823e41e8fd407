"""Rewards ``firered prefs`` can score edits with: one function per name, ``(sample, edits) -> rewards``.

- ``verifiable``: the synthetic benchmark's success checks (``firered_bench.grade.reward``); needs the ``spec`` a
  sample of ``python -m firered_bench`` carries in its manifest line.
- ``ocr``: the layout-aware OCR reward of a text edit (``firered_core.rewards``, the ``ocr`` extra); needs a quoted
  new text in the instruction (``Change "OPEN" to "CLOSED"``).

Public API: ``PrefSample``, ``REWARDS``, ``score_edits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image

__all__ = ["PrefSample", "REWARDS", "score_edits"]


@dataclass
class PrefSample:
    """One manifest line with its pictures decoded."""

    id: str
    task: str
    instruction: str
    sources: list[Image.Image]
    target: Image.Image
    spec: dict[str, Any] | None = field(default=None)


def _verifiable(sample: PrefSample, edits: Sequence[Image.Image], mode: str) -> list[float]:
    from firered_bench.grade.reward import verifiable_rewards

    if sample.spec is None:
        raise ValueError(f"{sample.id}: the verifiable reward needs the sample's 'spec' (a manifest written by "
                         "python -m firered_bench); use --reward ocr for other data")
    return verifiable_rewards([sample.sources] * len(edits), list(edits), [sample.spec] * len(edits), mode)


def _ocr(sample: PrefSample, edits: Sequence[Image.Image], mode: str) -> list[float]:
    from firered_core.rewards import ocr_rewards, parse_text_edit

    request = parse_text_edit(sample.instruction)
    if request is None or not sample.sources:
        raise ValueError(f"{sample.id}: the ocr reward needs a picture and a quoted new text in the instruction, "
                         f"got {sample.instruction!r}")
    n = len(edits)  # the same source object for every edit: it is read once
    return ocr_rewards([sample.sources[0]] * n, list(edits), [request] * n)


REWARDS: dict[str, Callable[[PrefSample, Sequence[Image.Image], str], list[float]]] = {
    "verifiable": _verifiable, "ocr": _ocr}


def score_edits(name: str, sample: PrefSample, edits: Sequence[Image.Image], mode: str = "graded") -> list[float]:
    """The rewards of ``edits`` of ``sample`` under the reward called ``name``."""
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {name!r}")
    return REWARDS[name](sample, edits, mode)
