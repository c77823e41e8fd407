"""The VLM judge reward of the alignment stage: a vision-language model rates each edit, scores are in [0, 1].

The judge sees the source picture(s), the edited result and the instruction, reasons, and ends with
``Rating: N`` on the scale ``rating_low..rating_high`` (0..10). The score of one pass is the expectation of the
rating over the rating tokens, weighted by their probabilities (``rating_tokens``), mapped to [0, 1]; the reward is
the mean over ``passes`` (K) sampled passes.

Two back-ends share ``JudgeConfig`` and the rubric:

- ``ChatJudge``: any OpenAI-compatible chat-completions server (vLLM, llama.cpp, ...), asked for
  ``logprobs: true, top_logprobs: N``. A server that returns no logprobs is still usable: the sampled rating is
  parsed from the text, which makes the score coarser; this is logged once per endpoint.
- ``TransformersJudge`` (``local_judge``): a transformers model in this process, read directly from its logits.

Every failure raises (``JudgeUnreachable``, ``JudgeError``) naming the endpoint and the problem; a failed
judgement is never a zero reward.

    config = JudgeConfig(endpoint="http://127.0.0.1:8000/v1", model="firered-judge", passes=4)
    rewards = judge_scores([[source]], [result], ['Change "OPEN" to "CLOSED"'], config)   # [0.83]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from PIL import Image

from .chat_client import ChatClient, JudgeError, message_text, user_message
from .rating_tokens import RatingScale, parse_rating, rating_expectation, rating_start

__all__ = ["JudgeConfig", "ChatJudge", "Judge", "judge_scores", "DEFAULT_RUBRIC"]

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are judging an image edit. The first {n_sources} picture(s) are the source, the last picture is the "
    "result of applying this instruction to them:\n\n{instruction}\n\nJudge how well the result follows the "
    "instruction, keeps everything the instruction does not ask to change, and looks natural and free of "
    "artefacts. Reason briefly, then end with one line 'Rating: N' where N is an integer from {low} (failed) to "
    "{high} (perfect).")


@dataclass(frozen=True)
class JudgeConfig:
    """How to reach the judge and how to read its ratings."""

    endpoint: str = ""  # base URL or full .../chat/completions URL of the server; unused by local back-ends
    model: str = ""  # the server's model name; empty leaves it to the server's default
    passes: int = 1  # K sampled judgements averaged per edit: the reasoning varies, so one pass is noisy
    temperature: float = 0.7  # sampling temperature of each pass; > 0 so that the K passes differ
    timeout_s: float = 120.0  # per request, reasoning about several pictures takes a while
    retries: int = 2  # extra tries after connection errors, timeouts, HTTP 429/5xx
    backoff_s: float = 1.0  # first wait between tries, doubled after each
    api_key: str = field(default="", repr=False)  # sent as a Bearer token when set; kept out of reprs and logs
    rating_low: int = 0
    rating_high: int = 10
    top_logprobs: int = 20  # candidates per token asked of the server (OpenAI allows up to 20)
    max_tokens: int = 512  # room for the reasoning and the rating line
    image_side: int = 768  # pictures are downscaled to this longest side before sending
    rubric: str = DEFAULT_RUBRIC  # may use {instruction}, {n_sources}, {low}, {high}

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1, got {self.passes}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 1..20, got {self.top_logprobs}")
        RatingScale(self.rating_low, self.rating_high)  # validates the scale

    @property
    def scale(self) -> RatingScale:
        return RatingScale(self.rating_low, self.rating_high)

    def prompt(self, instruction: str, n_sources: int) -> str:
        return self.rubric.format(instruction=instruction, n_sources=n_sources, low=self.rating_low,
                                  high=self.rating_high)


class Judge(Protocol):
    """A back-end: one score in [0, 1] per (sources, result, instruction)."""

    def scores(self, sources: Sequence[Sequence[Image.Image]], results: Sequence[Image.Image],
               instructions: Sequence[str]) -> list[float]: ...


# ---------------------------------------------------------------------------------------------------------------
# The chat-completions back-end
# ---------------------------------------------------------------------------------------------------------------


class ChatJudge:
    """Judges through an OpenAI-compatible chat-completions server, one request per pass."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.client = ChatClient(config.endpoint, api_key=config.api_key, timeout_s=config.timeout_s,
                                 retries=config.retries, backoff_s=config.backoff_s)
        self._warned_no_logprobs = False

    def scores(self, sources: Sequence[Sequence[Image.Image]], results: Sequence[Image.Image],
               instructions: Sequence[str]) -> list[float]:
        return [self.score(s, r, i) for s, r, i in zip(sources, results, instructions, strict=True)]

    def score(self, sources: Sequence[Image.Image], result: Image.Image, instruction: str) -> float:
        """Mean over the K passes of the normalised expected rating."""
        body = self.request_body(sources, result, instruction)
        ratings = [self.read_rating(self.client.complete(body)) for _ in range(self.config.passes)]
        return sum(self.config.scale.normalise(r) for r in ratings) / len(ratings)

    def request_body(self, sources: Sequence[Image.Image], result: Image.Image, instruction: str) -> dict[str, Any]:
        c = self.config
        message = user_message(c.prompt(instruction, len(sources)), [*sources, result], c.image_side)
        body: dict[str, Any] = {"messages": [message], "temperature": c.temperature, "max_tokens": c.max_tokens,
                                "logprobs": True, "top_logprobs": c.top_logprobs}
        if c.model:
            body["model"] = c.model
        return body

    def read_rating(self, reply: dict[str, Any]) -> float:
        """The expected rating of one answer (logprobs), or its written rating when the server sent none."""
        url, scale = self.client.url, self.config.scale
        text = message_text(reply, url)
        try:
            written = parse_rating(text, scale)
        except ValueError as exc:
            raise JudgeError(f"VLM judge at {url}: {exc}; answer: {text[-200:]!r}") from exc
        logprobs = _logprob_tokens(reply)
        if logprobs:
            expected = rating_expectation(logprobs, scale, rating_start(text))
            if expected is not None:
                return expected
        elif not self._warned_no_logprobs:
            self._warned_no_logprobs = True
            log.warning("VLM judge at %s returns no logprobs: using the written rating, a coarser score", url)
        if written is None:
            raise JudgeError(f"VLM judge at {url}: no rating {scale.low}..{scale.high} in the answer "
                             f"{text[-200:]!r}")
        return written


def _logprob_tokens(reply: dict[str, Any]) -> list[dict]:
    """``choices[0].logprobs.content`` of a reply, or [] when the server sent no logprobs."""
    try:
        content = reply["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return []
    return [c for c in content if isinstance(c, dict)] if isinstance(content, list) else []


# ---------------------------------------------------------------------------------------------------------------
# Batch interface
# ---------------------------------------------------------------------------------------------------------------


def judge_scores(sources: Sequence[Sequence[Image.Image]], results: Sequence[Image.Image],
                 instructions: Sequence[str], config: JudgeConfig, *, judge: Judge | None = None) -> list[float]:
    """One reward in [0, 1] per edit: ``sources[i]`` edited into ``results[i]`` following ``instructions[i]``.

    ``judge`` defaults to a ``ChatJudge`` on ``config.endpoint``; pass a ``TransformersJudge`` to judge locally.
    """
    if not len(sources) == len(results) == len(instructions):
        raise ValueError(f"sources, results and instructions must have the same length, got {len(sources)}, "
                         f"{len(results)}, {len(instructions)}")
    return (judge or ChatJudge(config)).scores(sources, results, instructions)
