"""The layout-aware OCR reward: is the requested text there, where the old text was, at the old size?

One implementation serves the RL stage (reward of sampled images) and the FireRed Text Edit node (ranking of
candidates). It follows the shape of FireRed's reward (a text term plus a layout term that only opens when the
text is roughly right, so huge or misplaced glyphs cannot buy reward), at the level of OCR lines:

1. **Source.** ``locate_source_text`` runs OCR on the source image. The line being edited is the detection that
   overlaps the caller's ``source_box`` most, else the one that best contains ``old_text`` (``text_accuracy`` >=
   ``min_source_match``). Detector boxes, not the caller's rectangle, are compared with the candidate's detector
   boxes (they are padded ~1.3x the cap height; a hand-drawn box is not): the caller's box is used as it is only
   when no detection overlaps it. With an ``old_text`` found in that line, the *expected line* is the line with
   the old text replaced by the new one ("HELLO WORLD", "WORLD" -> "THERE" expects "HELLO THERE"); otherwise it
   is the new text alone.
2. **Candidate lines.** OCR on the candidate; each detection is a line, and when the source box is known the
   detections on its text line (vertical centre within one source glyph height) are also joined left to right
   into one merged line, because OCR may split a line in one image and not in the other. Source geometry is
   rescaled to the candidate's pixel frame first (the pipeline's output size differs from the source's).
3. **Per line** ``j`` with text ``p_j`` and box ``b_j``, against the source box ``s``:

       T_j = text_accuracy(expected, p_j)            1 - min(D, |e|) / |e|, D = edit distance to the best
                                                     matching substring (text_match.py)
       P_j = position_agreement(b_j, s)              exp(-offset / tau_pos), offset in glyph heights (text_boxes.py)
       S_j = size_agreement(b_j, s)                  exp(-max(0, |ln(h_j / h_s)| - ln(1 + tol)) / tau_size)
       G(T) = clip((T - gate) / (1 - gate), 0, 1)    the gate: 0 below ``gate``, 1 for exact text
       R_j = (w_text * T_j + w_layout * G(T_j) * P_j * S_j) / (w_text + w_layout)

   The reward is ``max_j R_j`` (the first line wins ties, so results are deterministic). With the defaults
   (w_text = w_layout = 0.5, gate 0.5, tau_pos 1, tol 0.15, tau_size 0.3): the right text in place scores ~1,
   the right text three glyph heights away ~0.52, at twice the size ~0.58, text less than half right T/2 < 0.25.
4. **Without a source box** (no old text given or found): each candidate line is compared with the *nearest*
   source line (highest P * S). With no text in the source either (text added to a blank area) there is no layout
   to agree with and ``R_j = T_j``; ``LayoutScore.position`` / ``.size`` are then ``None``. A candidate with no
   detected text scores 0.

Differences from the FireRed report, whose weights and normalisation are not published: lines instead of
character boxes (robust to OCR segmentation, no character alignment needed), a smooth gate instead of a threshold
(a usable signal for RL near the threshold), a symmetric size penalty (shrunken text is as wrong as inflated
text), substring credit in the text term (Flow-GRPO's rule). Leftover old text elsewhere is not penalised.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image

from .ocr_reader import OcrReader, default_reader
from .text_boxes import TextBox, box_from_rect, box_iou, position_agreement, scale_box, size_agreement
from .text_match import normalise_text, text_accuracy

log = logging.getLogger(__name__)

__all__ = ["LayoutRewardConfig", "SourceText", "LayoutScore", "locate_source_text", "score_candidate",
           "ocr_layout_reward", "combine_terms"]


@dataclass(frozen=True)
class LayoutRewardConfig:
    """Weights and tolerances of the reward (FireRed does not publish its own: these are tunable defaults)."""

    w_text: float = 0.5  # weight of text correctness
    w_layout: float = 0.5  # weight of position x size agreement, opened by the gate
    gate: float = 0.5  # text accuracy below which layout earns nothing (stops "any text, right place" hacks)
    tau_pos: float = 1.0  # position score e-folding distance, in source glyph heights
    size_tolerance: float = 0.15  # relative glyph-height difference that is free (detector box jitter)
    tau_size: float = 0.3  # size score e-folding distance in |log height ratio| beyond the tolerance
    min_source_match: float = 0.5  # old-text accuracy a source line needs to be taken as the edited line
    ignore_case: bool = True  # OCR confuses o/O, s/S, c/C in many fonts
    ignore_spaces: bool = True  # OCR inserts and drops spaces; Chinese has none

    def __post_init__(self) -> None:
        if self.w_text < 0 or self.w_layout < 0 or self.w_text + self.w_layout <= 0:
            raise ValueError(f"w_text and w_layout must be >= 0 and not both 0, got {self.w_text}, {self.w_layout}")
        if not 0 <= self.gate < 1:
            raise ValueError(f"gate must be in [0, 1), got {self.gate}")
        if min(self.tau_pos, self.tau_size) <= 0 or self.size_tolerance < 0:
            raise ValueError("tau_pos and tau_size must be > 0 and size_tolerance >= 0")


@dataclass(frozen=True)
class SourceText:
    """What the source image says about the edit: computed once, reused for every candidate."""

    expected: str  # the text the edited line should read
    box: TextBox | None  # the line being edited, in the source's pixel frame; None = not known
    detections: tuple[TextBox, ...]  # every line found in the source
    size: tuple[int, int]  # (width, height) of the source
    note: str = ""


@dataclass(frozen=True)
class LayoutScore:
    """The reward of one candidate and its terms; boxes are in the candidate's pixel frame."""

    reward: float
    text: float
    position: float | None  # None when there is no source line to agree with
    size: float | None
    iou: float | None
    matched: TextBox | None  # the candidate line that earned the reward
    source_box: TextBox | None  # the source line it was compared with
    expected: str
    detections: tuple[TextBox, ...] = ()
    note: str = ""


def combine_terms(text: float, layout: float | None, config: LayoutRewardConfig) -> float:
    """``w_text * T + w_layout * G(T) * layout`` normalised to [0, 1]; ``T`` alone when there is no layout."""
    if layout is None:
        return text
    gate = min(max((text - config.gate) / (1.0 - config.gate), 0.0), 1.0)
    return (config.w_text * text + config.w_layout * gate * layout) / (config.w_text + config.w_layout)


def _as_pil(image: Image.Image | np.ndarray, name: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, mode="RGB")
    raise TypeError(f"{name}: expected a PIL image or a uint8 array [H, W, 3], got "
                    f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")


def _expected_line(line: str, old: str, new: str) -> str:
    """``line`` with its (case-insensitive) occurrence of ``old`` replaced by ``new``; ``new`` if it has none."""
    found = re.search(re.escape(old), line, flags=re.IGNORECASE) if old else None
    return line[:found.start()] + new + line[found.end():] if found else new


def _argmax(values: Sequence[float]) -> tuple[float, int]:
    """(largest value, its index), the first one on ties; (0, -1) for no values."""
    best, index = 0.0, -1
    for i, value in enumerate(values):
        if index < 0 or value > best:
            best, index = value, i
    return best, index


def locate_source_text(source: Image.Image | np.ndarray, new_text: str, *, old_text: str | None = None,
                       source_box: tuple[float, float, float, float] | None = None, reader: OcrReader | None = None,
                       config: LayoutRewardConfig | None = None) -> SourceText:
    """Find the line being edited in ``source`` and the text it should read afterwards (step 1 above)."""
    cfg = config or LayoutRewardConfig()
    if not isinstance(new_text, str) or not normalise_text(new_text, ignore_case=cfg.ignore_case):
        raise ValueError("new_text is empty: the OCR reward needs the text the edit should write")
    image = _as_pil(source, "source")
    given = box_from_rect(source_box) if source_box is not None else None
    found = tuple((reader or default_reader())(image))
    line, note = None, ""
    if given is not None:
        overlap, i = _argmax([box_iou(b, given) for b in found])
        line = found[i] if overlap > 0 else given
        note = f"source line {line.text!r} at the given box" if overlap > 0 else \
            "source box given by the caller, no OCR line there: its rectangle is used as it is"
    elif old_text:
        accuracy, i = _argmax([text_accuracy(old_text, b.text, ignore_case=cfg.ignore_case,
                                             ignore_spaces=cfg.ignore_spaces) for b in found])
        if i >= 0 and accuracy >= cfg.min_source_match:
            line = found[i]
            note = f"old text found in source line {line.text!r}"
        else:
            log.warning("old text %r not found in the source (OCR read %s); comparing with the nearest source line",
                        old_text, [b.text for b in found] or "nothing")
            note = f"old text {old_text!r} not found in the source"
    else:
        note = "old text unknown"
    if line is None:
        note += "; comparing with the nearest source line" if found else "; source has no text"
    expected = _expected_line(line.text, old_text, new_text) if line is not None and old_text else new_text
    return SourceText(expected=expected, box=line, detections=found, size=image.size, note=note)


def _same_line_merge(found: Sequence[TextBox], source: TextBox) -> TextBox | None:
    """The detections on the source box's text line joined left to right, when there are two or more."""
    sy, h = source.center[1], source.height
    on_line = sorted((b for b in found if abs(b.center[1] - sy) < h), key=lambda b: b.center[0])
    if len(on_line) < 2:
        return None
    # x extent of the union; the height of the tallest member (the union of a slightly tilted line is taller)
    x0, x1 = min(b.rect[0] for b in on_line), max(b.rect[2] for b in on_line)
    cy = sum(b.center[1] for b in on_line) / len(on_line)
    half = max(b.height for b in on_line) / 2.0
    return box_from_rect((x0, cy - half, x1, cy + half), text=" ".join(b.text for b in on_line),
                         score=min(b.score for b in on_line))


def _layout(line: TextBox, ref: TextBox, cfg: LayoutRewardConfig) -> tuple[float, float]:
    return (position_agreement(line, ref, cfg.tau_pos),
            size_agreement(line, ref, cfg.size_tolerance, cfg.tau_size))


def _nearest(line: TextBox, refs: Sequence[TextBox], cfg: LayoutRewardConfig) -> TextBox | None:
    """The source line ``line`` agrees with best in position x size (the first one on ties)."""
    return max(refs, key=lambda ref: np.prod(_layout(line, ref, cfg)), default=None)


def _score_line(line: TextBox, ref: TextBox | None, expected: str, cfg: LayoutRewardConfig) -> LayoutScore:
    text = text_accuracy(expected, line.text, ignore_case=cfg.ignore_case, ignore_spaces=cfg.ignore_spaces)
    if ref is None:
        return LayoutScore(reward=combine_terms(text, None, cfg), text=text, position=None, size=None, iou=None,
                           matched=line, source_box=None, expected=expected)
    position, size = _layout(line, ref, cfg)
    return LayoutScore(reward=combine_terms(text, position * size, cfg), text=text, position=position, size=size,
                       iou=box_iou(line, ref), matched=line, source_box=ref, expected=expected)


def score_candidate(source: SourceText, candidate: Image.Image | np.ndarray, *, reader: OcrReader | None = None,
                    config: LayoutRewardConfig | None = None) -> LayoutScore:
    """The reward of one candidate image against a located source (steps 2-4 above)."""
    cfg = config or LayoutRewardConfig()
    image = _as_pil(candidate, "candidate")
    found = tuple((reader or default_reader())(image))
    if not found:
        return LayoutScore(reward=0.0, text=0.0, position=None, size=None, iou=None, matched=None,
                           source_box=None, expected=source.expected, note="no text found in the candidate")
    sx, sy = image.width / source.size[0], image.height / source.size[1]
    fixed = scale_box(source.box, sx, sy) if source.box is not None else None
    lines = list(found)
    if fixed is not None and (merged := _same_line_merge(found, fixed)) is not None:
        lines.append(merged)
    others = [scale_box(b, sx, sy) for b in source.detections] if fixed is None else []
    best: LayoutScore | None = None
    for line in lines:
        ref = fixed if fixed is not None else _nearest(line, others, cfg)
        scored = _score_line(line, ref, source.expected, cfg)
        if best is None or scored.reward > best.reward:
            best = scored
    assert best is not None
    return replace(best, detections=found, note=source.note)


def ocr_layout_reward(source: Image.Image | np.ndarray, candidate: Image.Image | np.ndarray, new_text: str, *,
                      old_text: str | None = None, source_box: tuple[float, float, float, float] | None = None,
                      reader: OcrReader | None = None, config: LayoutRewardConfig | None = None) -> LayoutScore:
    """The reward of ``candidate`` as an edit of ``source`` that writes ``new_text`` (see the module docstring).

    To score several candidates of one source, call ``locate_source_text`` once and ``score_candidate`` per
    candidate: the source is then read only once.
    """
    located = locate_source_text(source, new_text, old_text=old_text, source_box=source_box, reader=reader,
                                 config=config)
    return score_candidate(located, candidate, reader=reader, config=config)
