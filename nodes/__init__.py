"""The FireRed node pack (ComfyUI V1 node API), collected from one module per node family.

Every module listed in ``NODE_MODULES`` defines ``NODE_CLASSES: dict[str, type]`` (node id -> class) and
``DISPLAY_NAMES: dict[str, str]``; this package merges them into ComfyUI's ``NODE_CLASS_MAPPINGS`` and
``NODE_DISPLAY_NAME_MAPPINGS``. A module whose file is absent is skipped; one that fails to import is logged and
skipped, so one broken node family never takes the others (or ComfyUI's start-up) down with it.

==========================  ====================================================================================
``common.py``               IMAGE <-> PIL, ``FireRedNodeError``, input checks (shared with every node module)
``comfy_bridge.py``         all access to ComfyUI (model folders, progress, interrupt, model management), with
                            fallbacks so nodes run without it
``model_handle.py``         ``FireRedModel``, the FIRERED_MODEL value: shared weights + this view's LoRA stack
``weights_bundle.py``       one module per pipeline component, each for its own ComfyUI ModelPatcher
``comfy_placement.py``      the pipeline's placement backed by ComfyUI: loads a component's patcher when used
``model_sources.py``        the loader's choices and how each becomes a pipeline
``edit_runner.py``          the batch rule, seeds, progress/cancel, IMAGE/LATENT outputs
``composite.py``            region-of-interest crops and stitching for more than three pictures
``reference_rewrite.py``    "Picture N" / "图N" rewritten for the composites
``vlm_hook.py``             optional crops from an OpenAI-compatible vision-language model
``package_finder.py``       firered_core / firered_train importable from a plain clone
``train_lora_data.py``      training pairs from a folder or from IMAGE batches + instructions
``train_lora_files.py``     the LoRA's checked name, its run folder (checkpoints, resume), atomic publishing
``train_lora_run.py``       the trainer config from the node's values, the in-process run, loss curve and preview
==========================  ====================================================================================

The node classes themselves live in ``loaders.py``, ``lora_loader.py``, ``edit.py``, ``multi_image.py``,
``text_edit.py``, ``identity_edit.py`` and ``train_lora.py``.

Importing does no work: the node modules import torch, firered_core and ComfyUI lazily, inside the functions
that run when a node executes. The package is only ever imported relatively, as a subpackage of the plugin
(ComfyUI owns the top-level name ``nodes``); unit tests import it from the repository root.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from . import package_finder

log = logging.getLogger(__name__)

NODE_MODULES: tuple[str, ...] = ("loaders", "lora_loader", "edit", "multi_image", "text_edit", "identity_edit",
                                  "train_lora")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _collect() -> None:
    here = Path(__file__).resolve().parent
    for name in NODE_MODULES:
        if not (here / f"{name}.py").is_file():
            continue
        try:
            module = importlib.import_module(f".{name}", __name__)
            classes, names = dict(module.NODE_CLASSES), dict(module.DISPLAY_NAMES)
        except Exception:  # a broken module must not stop the others from registering
            log.exception("FireRed: the node module %r failed to load; its nodes are unavailable", name)
            continue
        clashes = sorted(set(classes) & set(NODE_CLASS_MAPPINGS))
        if clashes:
            log.error("FireRed: node module %r redefines node ids %s; keeping the first definitions", name, clashes)
            classes = {k: v for k, v in classes.items() if k not in clashes}
        NODE_CLASS_MAPPINGS.update(classes)
        NODE_DISPLAY_NAME_MAPPINGS.update({k: v for k, v in names.items() if k in classes})


package_finder.install()
_collect()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_MODULES"]
