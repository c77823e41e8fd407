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

RapidOCR's own logging (model paths at start-up, "detection result is empty") is turned down to errors.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .extras import import_extra
from .text_boxes import TextBox, quad_from_array

log = logging.getLogger(__name__)

__all__ = ["OcrReader", "RapidOcrReader", "default_reader"]

OcrReader = Callable[[Image.Image], Sequence[TextBox]]


class RapidOcrReader:
    """An ``OcrReader`` over ``rapidocr.RapidOCR``, built lazily and safe to share between threads."""

    def __init__(self, *, use_cls: bool = False, threads: int | None = None, min_score: float = 0.5) -> None:
        self.use_cls = use_cls
        self.threads = threads
        self.min_score = min_score
        self._engine = None
        self._lock = threading.Lock()

    def _build(self):  # -> rapidocr.RapidOCR
        rapidocr = import_extra("rapidocr", "ocr", "The layout-aware OCR reward")
        import_extra("onnxruntime", "ocr", "The layout-aware OCR reward (RapidOCR's inference engine)")
        params = {"Global.log_level": "error", "Global.use_cls": self.use_cls, "Global.text_score": self.min_score}
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
        return [TextBox(text=str(text), score=float(score), quad=quad_from_array(quad))
                for quad, text, score in zip(np.asarray(result.boxes), result.txts, result.scores)]


_DEFAULT: RapidOcrReader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_reader() -> RapidOcrReader:
    """One shared ``RapidOcrReader`` per process, so its models load once (on its first call, not here)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = RapidOcrReader()
        return _DEFAULT
