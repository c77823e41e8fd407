"""Make ``firered_core`` and ``firered_train`` importable from a plain clone in ``custom_nodes/``.

``pip install .`` puts both packages into site-packages, and then this module does nothing. A ComfyUI user who only
cloned the repository into ``custom_nodes/`` and installed ``requirements.txt`` has them as folders of the plugin
(``firered_core/`` and ``train/``), which ComfyUI does not put on ``sys.path``. Adding the plugin folder to
``sys.path`` would also expose its ``nodes/`` and ``train/`` folders as top-level modules - ``nodes`` is
ComfyUI's own module - so instead a meta-path finder answers for exactly these two names, and only when nothing
else on the path provides them. Installing the finder imports nothing and reads no file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"firered_core": "firered_core", "firered_train": "train"}  # import name -> folder in the plugin


class PluginPackageFinder(importlib.abc.MetaPathFinder):
    """Finds the plugin's own packages by folder, after every other finder has had its turn."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        folder = PACKAGES.get(fullname)
        if folder is None:
            return None  # submodules are found through the package's __path__ by the normal machinery
        init = PLUGIN_ROOT / folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init,
                                                      submodule_search_locations=[str(init.parent)])


def install() -> None:
    """Append the finder to ``sys.meta_path`` once; it only answers when site-packages has no such package."""
    if not any(isinstance(f, PluginPackageFinder) for f in sys.meta_path):
        sys.meta_path.append(PluginPackageFinder())
