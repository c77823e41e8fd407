"""Text detection + recognition with RapidOCR (PP-OCR models in ONNX, shipped inside the ``rapidocr`` wheel).

``RapidOcrReader()(image)`` returns the text lines of a PIL image as ``TextBox`` es in RapidOCR's reading order
(top to bottom, then left to right). Nothing is downloaded: the models come with the package, and the engine is
built on the first call, so constructing a reader is free. The rewards accept any callable with the same signature
(``OcrReader``), which is how tests and other OCR engines plug in.

Settings that matter for a reward:

- ``use_cls=False`` by default: the 180-degree text-direction classifier is skipped. Edited text is upright in
  practice, and the classifier costs a third of the time per line.
- ``threads``: ONNX Runtime's intra-op threads (``None`` = its default, all cores). Results do not depend on it.
- ``min_score``: lines recognised with lower confidence are dropped (RapidOCR's own default is 0.5).
- ``char_boxes=True`` by default: RapidOCR's ``return_word_box`` + ``return_single_char_box`` give one box per
  character (x extent from the recogniser's CTC columns, y extent of the line), kept in ``TextBox.chars``. A
  line whose character boxes are missing or do not spell its text gets none, and the reward splits its box
  evenly instead (``char_layout.char_boxes``).

RapidOCR's own logging (model paths at start-up, "detection result is empty") is turned down to errors.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .extras import import_extra
from .text_boxes import TextBox, quad_from_array

log = logging.getLogger(__name__)

__all__ = ["OcrReader", "RapidOcrReader", "default_reader", "attach_chars"]

OcrReader = Callable[[Image.Image], Sequence[TextBox]]


class RapidOcrReader:
    """An ``OcrReader`` over ``rapidocr.RapidOCR``, built lazily and safe to share between threads."""

    def __init__(self, *, use_cls: bool = False, threads: int | None = None, min_score: float = 0.5,
                 char_boxes: bool = True) -> None:
        self.use_cls = use_cls
        self.char_boxes = char_boxes
        self.threads = threads
        self.min_score = min_score
        self._engine = None
        self._lock = threading.Lock()

    def _build(self):  # -> rapidocr.RapidOCR
        rapidocr = import_extra("rapidocr", "ocr", "The layout-aware OCR reward")
        import_extra("onnxruntime", "ocr", "The layout-aware OCR reward (RapidOCR's inference engine)")
        params = {"Global.log_level": "error", "Global.use_cls": self.use_cls, "Global.text_score": self.min_score,
                  "Global.return_word_box": self.char_boxes, "Global.return_single_char_box": self.char_boxes}
        if self.threads is not None:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(self.threads)
        engine = rapidocr.RapidOCR(params=params)
        log.info("RapidOCR %s ready (direction classifier %s)", getattr(rapidocr, "__version__", "?"),
                 "on" if self.use_cls else "off")
        return engine

    def __call__(self, image: Image.Image) -> list[TextBox]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"OCR expects a PIL image, got {type(image).__name__}")
        with self._lock:  # one engine, one call at a time: ONNX sessions already use every core
            if self._engine is None:
                self._engine = self._build()
            result = self._engine(image.convert("RGB"))
        if result.boxes is None or result.txts is None:
            return []
        # RapidOCR already sorts its lines top to bottom, then left to right
        lines = [TextBox(text=str(text), score=float(score), quad=quad_from_array(quad))
                 for quad, text, score in zip(np.asarray(result.boxes), result.txts, result.scores)]
        return attach_chars(lines, getattr(result, "word_results", ())) if self.char_boxes else lines


def _char_line(words: object) -> tuple[TextBox, ...] | None:
    """RapidOCR's ((char, score, 4 corners), ...) of one line as character boxes; None when it is not that."""
    try:
        return tuple(TextBox(text=str(ch), score=float(score), quad=quad_from_array(corners))
                     for ch, score, corners in words)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def attach_chars(lines: Sequence[TextBox], word_results: Sequence[object]) -> list[TextBox]:
    """``lines`` with their character boxes from RapidOCR's ``word_results`` attached.

    RapidOCR drops the entry of a line that got no character box, so entries are matched to lines in order by
    their text (the characters must spell the line without its spaces), not by index.
    """
    out, k = [], 0
    for line in lines:
        chars = _char_line(word_results[k]) if k < len(word_results) else None
        if chars and "".join(c.text for c in chars) == "".join(line.text.split()):
            line, k = replace(line, chars=chars), k + 1
        out.append(line)
    return out


_DEFAULT: RapidOcrReader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_reader() -> RapidOcrReader:
    """One shared ``RapidOcrReader`` per process, so its models load once (on its first call, not here)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = RapidOcrReader()
        return _DEFAULT
