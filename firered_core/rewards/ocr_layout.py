"""The layout-aware OCR reward: is the requested text there, where the old text was, at the old size?

One implementation serves the RL stages (``ocr_rewards``, a batch of sampled images) and the FireRed Text Edit
node (``locate_source_text`` once, ``score_candidate`` per candidate). The formula is the report's:

    R = w_text * T + w_layout * G(T) * L,   T = 1 - min(D, |s_tgt|) / max(|s_tgt|, 1)

divided by ``w_text + w_layout`` so that R is in [0, 1]. ``T`` is the text term (``text_match.text_accuracy``),
``G`` the gate, ``L`` the character layout term (``char_layout``: matched character centres and sizes, with the
report's ``|s_pred| / |s_tgt|`` length factor).

1. **Source.** ``locate_source_text`` runs OCR on the source image. The line being edited is the detection that
   overlaps the caller's ``source_box`` most, else the one that best contains ``old_text`` (``text_accuracy`` >=
   ``min_source_match``); the caller's rectangle is used as it is only when no detection overlaps it. With an
   ``old_text`` found in that line, the *expected line* ``s_tgt`` is the line with the old text replaced by the
   new one ("HELLO WORLD", "WORLD" -> "THERE" expects "HELLO THERE"); otherwise it is the new text alone. The
   reference layout is ``s_tgt`` set where that line's characters are, at their size.
2. **Candidate lines.** OCR on the candidate; each detection is a line, and when the source line is known the
   detections on its text line are also joined left to right into one merged line (OCR may split a line in one
   image and not in the other). Source geometry is rescaled to the candidate's pixel frame first.
3. **Per line** ``j``: ``T_j`` against its text, ``L_j`` against the reference (best of left / centre / right
   alignment), ``R_j`` as above. The reward is ``max_j R_j`` (the first line wins ties: deterministic).
4. **Without a source line** (no old text given or found) each candidate line is compared with the source line
   whose characters agree with it best. With no text in the source (text added to a blank area) there is no
   layout to agree with and ``R_j = T_j``; ``LayoutScore.position`` / ``.size`` are then ``None``. A candidate
   with no detected text scores 0.

With the defaults, on a rendered "OPEN" sign edited to "CLOSED" (tests/core/test_rewards_ocr.py, RapidOCR's
character boxes; the even split of line boxes gives the same figures to 0.01): in place 1.00, twice the size
0.63, three times 0.60, moved 6 glyph heights away 0.60, "CLOSET" in place 0.56, "HELLO" 0.20, no text 0.

From the report: the two terms, the edit-distance text term, the gate on the text term, character matching with
centre distances and an over-scaling penalty, the length factor. This project's choices (the report publishes no
values): every weight and threshold (``LayoutRewardConfig``), the smooth gate by default, distances in reference
glyph heights with a free half glyph (proportional fonts), pairing by the edit-distance alignment, the three
alignment anchors, the even split of a line box when the OCR gives no character boxes (RapidOCR does give them;
other readers may not), substring credit in the text term (Flow-GRPO's rule: OCR joins neighbouring words into a
line), and case and spaces ignored. Leftover old text elsewhere in the image is not penalised.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image

from .char_layout import CharLayout, char_boxes, layout_agreement, reference_chars
from .layout_config import LayoutRewardConfig
from .ocr_reader import OcrReader, default_reader
from .quoted_text import TextEditRequest
from .text_boxes import TextBox, box_from_rect, box_iou, scale_box
from .text_match import normalise_text, substring_alignment, text_accuracy

log = logging.getLogger(__name__)

__all__ = ["LayoutRewardConfig", "SourceText", "LayoutScore", "locate_source_text", "score_candidate",
           "ocr_layout_reward", "ocr_rewards", "combine_terms"]


@dataclass(frozen=True)
class SourceText:
    """What the source image says about the edit: computed once, reused for every candidate."""

    expected: str  # the text the edited line should read
    box: TextBox | None  # the line being edited, in the source's pixel frame; None = not known
    detections: tuple[TextBox, ...]  # every line found in the source
    size: tuple[int, int]  # (width, height) of the source
    note: str = ""
    parts: tuple[str, str, str] = ("", "", "")  # expected = prefix + new + suffix; the source line has old for new

    def __post_init__(self) -> None:
        if self.parts == ("", "", ""):  # not given: the whole expected text is new
            object.__setattr__(self, "parts", ("", self.expected, ""))
        if "".join(self.parts) != self.expected:
            raise ValueError(f"parts {self.parts!r} must join to expected {self.expected!r}")


@dataclass(frozen=True)
class LayoutScore:
    """The reward of one candidate and its terms; boxes are in the candidate's pixel frame."""

    reward: float
    text: float
    position: float | None  # mean e^-d_i of the paired characters; None when nothing could be compared
    size: float | None  # mean e^-ds_i (over-scaling) of the paired characters
    iou: float | None
    matched: TextBox | None  # the candidate line that earned the reward
    source_box: TextBox | None  # the source line it was compared with
    expected: str
    detections: tuple[TextBox, ...] = ()
    note: str = ""
    layout: float | None = None  # the layout term L before gating; None when there is no source line
    paired: int = 0  # characters paired between the matched line and the reference


def combine_terms(text: float, layout: float | None, config: LayoutRewardConfig) -> float:
    """``w_text * T + w_layout * G(T) * layout`` normalised to [0, 1]; ``T`` alone when there is no layout."""
    if layout is None:
        return text
    gated = config.w_layout * config.gate_value(text) * layout
    return (config.w_text * text + gated) / (config.w_text + config.w_layout)


def _as_pil(image: Image.Image | np.ndarray, name: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, mode="RGB")
    raise TypeError(f"{name}: expected a PIL image or a uint8 array [H, W, 3], got "
                    f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")


def _expected_parts(line: str, old: str, new: str) -> tuple[str, str, str]:
    """(prefix, new, suffix): ``line`` with its (case-insensitive) ``old`` replaced by ``new``; ``new`` alone if
    it has none."""
    found = re.search(re.escape(old), line, flags=re.IGNORECASE) if old else None
    return (line[:found.start()], new, line[found.end():]) if found else ("", new, "")


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
    parts = _expected_parts(line.text, old_text, new_text) if line is not None and old_text else ("", new_text, "")
    return SourceText(expected="".join(parts), box=line, detections=found, size=image.size, note=note, parts=parts)


def _same_line_merge(found: Sequence[TextBox], source: TextBox, ignore_case: bool) -> TextBox | None:
    """The detections on the source box's text line joined left to right, when there are two or more."""
    sy, h = source.center[1], source.height
    on_line = sorted((b for b in found if abs(b.center[1] - sy) < h), key=lambda b: b.center[0])
    if len(on_line) < 2:
        return None
    # x extent of the union; the height of the tallest member (the union of a slightly tilted line is taller)
    x0, x1 = min(b.rect[0] for b in on_line), max(b.rect[2] for b in on_line)
    cy = sum(b.center[1] for b in on_line) / len(on_line)
    half = max(b.height for b in on_line) / 2.0
    merged = box_from_rect((x0, cy - half, x1, cy + half), text=" ".join(b.text for b in on_line),
                           score=min(b.score for b in on_line))
    # each member keeps its own character boxes: the gaps between members are not spread over the characters
    return replace(merged, chars=tuple(c for b in on_line for c in char_boxes(b, ignore_case=ignore_case)))


def _layout(line: TextBox, ref: TextBox, parts: tuple[str, str, str], cfg: LayoutRewardConfig) -> CharLayout:
    """The character layout term of ``line`` against the expected line set in ``ref``'s place (best anchor)."""
    pred = char_boxes(line, ignore_case=cfg.ignore_case)
    alignment = substring_alignment(normalise_text("".join(parts), ignore_case=cfg.ignore_case),
                                    "".join(c.text for c in pred))
    best = CharLayout(layout=0.0, position=None, size=None, paired=0)
    for chars in reference_chars(ref, parts, ignore_case=cfg.ignore_case):
        scored = layout_agreement(pred, chars, alignment, cfg)
        if scored.layout > best.layout:
            best = scored
    return best


def _nearest(line: TextBox, refs: Sequence[TextBox], parts: tuple[str, str, str],
             cfg: LayoutRewardConfig) -> TextBox | None:
    """The source line whose place ``line`` agrees with best (the first one on ties)."""
    return max(refs, key=lambda ref: _layout(line, ref, parts, cfg).layout, default=None)


def _score_line(line: TextBox, ref: TextBox | None, parts: tuple[str, str, str],
                cfg: LayoutRewardConfig) -> LayoutScore:
    expected = "".join(parts)
    text = text_accuracy(expected, line.text, ignore_case=cfg.ignore_case, ignore_spaces=cfg.ignore_spaces)
    if ref is None:
        return LayoutScore(reward=combine_terms(text, None, cfg), text=text, position=None, size=None, iou=None,
                           matched=line, source_box=None, expected=expected)
    terms = _layout(line, ref, parts, cfg)
    return LayoutScore(reward=combine_terms(text, terms.layout, cfg), text=text, position=terms.position,
                       size=terms.size, iou=box_iou(line, ref), matched=line, source_box=ref, expected=expected,
                       layout=terms.layout, paired=terms.paired)


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
    if fixed is not None and (merged := _same_line_merge(found, fixed, cfg.ignore_case)) is not None:
        lines.append(merged)
    others = [scale_box(b, sx, sy) for b in source.detections] if fixed is None else []
    best: LayoutScore | None = None
    for line in lines:
        ref = fixed if fixed is not None else _nearest(line, others, source.parts, cfg)
        scored = _score_line(line, ref, source.parts, cfg)
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


def ocr_rewards(sources: Sequence[Image.Image | np.ndarray], results: Sequence[Image.Image | np.ndarray],
                requests: Sequence[TextEditRequest], config: LayoutRewardConfig | None = None, *,
                reader: OcrReader | None = None) -> list[float]:
    """The reward of each ``results[i]`` as the edit ``requests[i]`` of ``sources[i]``, for the training stages.

    A source that appears several times with the same request (a group of samples of one prompt, passed as the
    same object) is read once.
    """
    if not len(sources) == len(results) == len(requests):
        raise ValueError(f"sources, results and requests must have one entry per sample, got {len(sources)}, "
                         f"{len(results)} and {len(requests)}")
    located: dict[tuple[int, str, str | None], SourceText] = {}
    rewards = []
    for i, (source, result, request) in enumerate(zip(sources, results, requests)):
        if not isinstance(request, TextEditRequest):
            raise TypeError(f"requests[{i}]: expected a TextEditRequest (see parse_text_edit), "
                            f"got {type(request).__name__}")
        key = (id(source), request.new, request.old)
        if key not in located:
            located[key] = locate_source_text(source, request.new, old_text=request.old, reader=reader,
                                              config=config)
        rewards.append(score_candidate(located[key], result, reader=reader, config=config).reward)
    return rewards
