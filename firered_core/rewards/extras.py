"""Optional dependencies of the rewards, imported only when a reward runs.

The OCR reward needs the ``ocr`` extra (rapidocr + onnxruntime) and the identity reward the ``face`` extra (dlib
and its model files). ``import firered_core.rewards`` works without either; the first call that needs one raises
``MissingExtraError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "import_extra"]


class MissingExtraError(ImportError):
    """An optional dependency of a reward is not installed; the message says which extra provides it."""


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` telling how to install the ``extra`` that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the Python module {module!r}, which is not installed ({exc}). Install the optional "
            f"extra: pip install 'comfyui-firered[{extra}]' (or, in a source checkout, pip install -e '.[{extra}]')"
        ) from exc
