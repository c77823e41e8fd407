"""Rewards ``firered prefs`` can score edits with: one function per name, ``(sample, edits) -> rewards``.

- ``verifiable``: the synthetic benchmark's success checks (``firered_bench.grade.reward``); needs the ``spec`` a
  sample of ``python -m firered_bench`` carries in its manifest line.
- ``ocr``: the layout-aware OCR reward of a text edit (``firered_core.rewards``, the ``ocr`` extra); needs a quoted
  new text in the instruction (``Change "OPEN" to "CLOSED"``).
- ``judge``: the VLM judge (``firered_core.rewards.vlm_judge``): any OpenAI-compatible chat server rates each edit
  against its sources and instruction, the mean of K passes of the probability-weighted rating, in [0, 1], or a
  local Qwen2.5-VL folder read from its logits (``firered_core.rewards.local_judge``). Needs a ``judge``
  (``build_judge`` makes either); an unreachable or broken server raises, never a zero reward.

Public API: ``PrefSample``, ``REWARDS``, ``JUDGE_KEY_ENV``, ``build_judge``, ``chat_judge``, ``score_edits``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image

__all__ = ["JUDGE_KEY_ENV", "PrefSample", "REWARDS", "build_judge", "chat_judge", "score_edits"]

JUDGE_KEY_ENV = "FIRERED_JUDGE_API_KEY"  # the judge's API key is read from the environment, never from a file


@dataclass
class PrefSample:
    """One manifest line with its pictures decoded."""

    id: str
    task: str
    instruction: str
    sources: list[Image.Image]
    target: Image.Image
    spec: dict[str, Any] | None = field(default=None)


def _verifiable(sample: PrefSample, edits: Sequence[Image.Image], mode: str, judge: Any) -> list[float]:
    from firered_bench.grade.reward import verifiable_rewards

    if sample.spec is None:
        raise ValueError(f"{sample.id}: the verifiable reward needs the sample's 'spec' (a manifest written by "
                         "python -m firered_bench); use --reward ocr for other data")
    return verifiable_rewards([sample.sources] * len(edits), list(edits), [sample.spec] * len(edits), mode)


def _ocr(sample: PrefSample, edits: Sequence[Image.Image], mode: str, judge: Any) -> list[float]:
    from firered_core.rewards import ocr_rewards, parse_text_edit

    request = parse_text_edit(sample.instruction)
    if request is None or not sample.sources:
        raise ValueError(f"{sample.id}: the ocr reward needs a picture and a quoted new text in the instruction, "
                         f"got {sample.instruction!r}")
    n = len(edits)  # the same source object for every edit: it is read once
    return ocr_rewards([sample.sources[0]] * n, list(edits), [request] * n)


def _judge(sample: PrefSample, edits: Sequence[Image.Image], mode: str, judge: Any) -> list[float]:
    if judge is None:
        raise ValueError("the judge reward needs a judge: the endpoint of an OpenAI-compatible chat server "
                         "(--judge-endpoint, or nft.judge_endpoint in a config)")
    n = len(edits)
    return judge.scores([sample.sources] * n, list(edits), [sample.instruction] * n)


REWARDS: dict[str, Callable[[PrefSample, Sequence[Image.Image], str, Any], list[float]]] = {
    "verifiable": _verifiable, "ocr": _ocr, "judge": _judge}


def chat_judge(endpoint: str, *, model: str = "", passes: int = 1, timeout_s: float = 120.0,
               key_env: str = JUDGE_KEY_ENV) -> Any:
    """A ``ChatJudge`` on ``endpoint`` (the API key, if any, from the environment variable ``key_env``)."""
    import os

    from firered_core.rewards.vlm_judge import ChatJudge, JudgeConfig

    if not endpoint:
        raise ValueError("the judge reward needs the endpoint of an OpenAI-compatible chat server, e.g. "
                         "http://127.0.0.1:8000/v1, or a local Qwen2.5-VL model folder")
    return ChatJudge(JudgeConfig(endpoint=endpoint, model=model, passes=passes, timeout_s=timeout_s,
                                 api_key=os.environ.get(key_env, "") if key_env else ""))


def build_judge(endpoint: str = "", local: str = "", *, model: str = "", passes: int = 1,
                timeout_s: float = 120.0, key_env: str = JUDGE_KEY_ENV) -> Any:
    """The judge of ``endpoint`` (``chat_judge``) or of the local Qwen2.5-VL folder ``local``
    (``firered_core.rewards.load_local_judge``): exactly one of them."""
    if endpoint and local:
        raise ValueError(f"the judge is either a chat server ({endpoint}) or a local model folder ({local}), "
                         "not both")
    if local:
        from firered_core.rewards import load_local_judge

        return load_local_judge(local)
    return chat_judge(endpoint, model=model, passes=passes, timeout_s=timeout_s, key_env=key_env)


def score_edits(name: str, sample: PrefSample, edits: Sequence[Image.Image], mode: str = "graded",
                judge: Any = None) -> list[float]:
    """The rewards of ``edits`` of ``sample`` under the reward called ``name`` (``judge``: the judge reward's)."""
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {name!r}")
    return REWARDS[name](sample, edits, mode, judge)
