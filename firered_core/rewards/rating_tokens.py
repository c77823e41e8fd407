"""A judge's rating read as an expectation over rating tokens, or, failing that, parsed from its text.

A VLM judge ends its answer with ``Rating: N`` on an integer scale ``low..high``. Rather than take the sampled N,
the score is the expectation of the rating under the model's probabilities at the position where the rating
starts: ``E = sum_r r p(r) / sum_r p(r)`` over the ratings of the scale, renormalised over the ratings present
(probability left to other tokens does not count). ``rating_expectation`` does this from OpenAI-style
``logprobs`` (the ``top_logprobs`` candidates of each generated token); the local back-end feeds the same function
from its logits.

Ratings of several tokens: Qwen's tokenizer splits numbers into single digits, so ``10`` is ``1`` then ``0``.
Its probability is ``p("1") p("0" | "1")``, and the rating 1 keeps the rest of ``p("1")``. From a server's
logprobs ``p("0" | "1")`` is known only when ``1`` is the token that was sampled; otherwise the continuation is
unknown and the whole of ``p("1")`` counts for 1. A tokenizer with ``10`` as one token needs nothing of this.

Servers that return no logprobs: the sampled rating is parsed from the text (``parse_rating``); the judge logs
this once per endpoint. An answer whose rating lies outside the scale, or that carries no rating at all, is an
error, never a zero.

Public API: ``RatingScale``, ``rating_expectation``, ``parse_rating``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["RatingScale", "rating_expectation", "parse_rating", "Candidates"]

# (token text, log-probability) of the candidates at one position
Candidates = Sequence[tuple[str, float]]

_MARKER = re.compile(r"rating\s*[:=]?\s*\**\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class RatingScale:
    """The integer ratings ``low..high`` a judge answers with."""

    low: int = 0
    high: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError(f"rating scale must satisfy 0 <= low < high, got {self.low}..{self.high}")

    @property
    def texts(self) -> dict[str, int]:
        return {str(r): r for r in range(self.low, self.high + 1)}

    def is_prefix(self, text: str) -> bool:
        """Whether ``text`` starts (or is) the writing of some rating."""
        return bool(text) and any(t.startswith(text) for t in self.texts)

    def normalise(self, rating: float) -> float:
        """The rating mapped to [0, 1]."""
        return (rating - self.low) / (self.high - self.low)


# ---------------------------------------------------------------------------------------------------------------
# Expectation over rating tokens
# ---------------------------------------------------------------------------------------------------------------


def rating_masses(first: Candidates, scale: RatingScale,
                  next_candidates: Callable[[tuple[str, ...]], Candidates | None]) -> dict[int, float]:
    """Unnormalised probability of each rating, from the candidates where the rating starts.

    ``next_candidates(path)`` gives the candidates after the rating tokens ``path``, or None when unknown.
    """
    masses: dict[int, float] = {}

    def walk(candidates: Candidates, path: tuple[str, ...], p_path: float) -> float:
        total = 0.0
        for token, logprob in candidates:
            text = "".join(path) + token.strip()
            if not scale.is_prefix(text):
                continue
            p = p_path * math.exp(logprob)
            longer = any(t != text and t.startswith(text) for t in scale.texts)
            after = next_candidates(path + (token.strip(),)) if longer else None
            extended = walk(after, path + (token.strip(),), p) if after is not None else 0.0
            if text in scale.texts:
                rating = scale.texts[text]
                masses[rating] = masses.get(rating, 0.0) + max(p - extended, 0.0)
            total += p if text in scale.texts else extended
        return total

    walk(first, (), 1.0)
    return masses


def expectation(masses: dict[int, float]) -> float | None:
    """``sum r p(r) / sum p(r)``, or None when no rating has any probability."""
    total = sum(masses.values())
    if total <= 0:
        return None
    return sum(r * p for r, p in masses.items()) / total


def rating_expectation(logprobs: Sequence[dict], scale: RatingScale, start_char: int = 0) -> float | None:
    """The expected rating from OpenAI ``logprobs.content`` (one dict per generated token), or None if absent.

    The rating starts at the first generated token reaching past character ``start_char`` of the answer whose
    text begins a rating; ``top_logprobs`` there (and at the following tokens, for ratings of several tokens) give the
    candidates.
    """
    tokens = [str(entry.get("token", "")) for entry in logprobs]
    offset, start = 0, None
    for i, token in enumerate(tokens):
        if offset + len(token) > start_char and scale.is_prefix(token.strip()):  # " 7" may start before it
            start = i
            break
        offset += len(token)
    if start is None:
        return None

    def candidates(i: int) -> Candidates:
        entry = logprobs[i]
        listed = [(str(c["token"]), float(c["logprob"])) for c in entry.get("top_logprobs") or []]
        return listed or [(tokens[i], float(entry.get("logprob", 0.0)))]

    def following(path: tuple[str, ...]) -> Candidates | None:
        i = start + len(path)
        sampled = tuple(t.strip() for t in tokens[start:i])
        return candidates(i) if i < len(tokens) and sampled == path else None

    return expectation(rating_masses(candidates(start), scale, following))


# ---------------------------------------------------------------------------------------------------------------
# The rating written in the text
# ---------------------------------------------------------------------------------------------------------------


def rating_start(text: str) -> int:
    """Character offset just after the last ``Rating:`` marker, or 0 when there is none."""
    found = list(_MARKER.finditer(text))
    return found[-1].end() if found else 0


def parse_rating(text: str, scale: RatingScale) -> float | None:
    """The number after the last ``Rating:`` marker (or a bare number answer), checked against ``scale``.

    None when the text holds no rating; ``ValueError`` when the rating lies outside the scale.
    """
    start = rating_start(text)
    if start == 0 and not _NUMBER.fullmatch(text.strip()):
        return None
    match = _NUMBER.match(text[start:].strip())
    if match is None:
        return None
    rating = float(match.group(0))
    if not scale.low <= rating <= scale.high:
        raise ValueError(f"rating {match.group(0)} is outside the scale {scale.low}..{scale.high}")
    return rating
