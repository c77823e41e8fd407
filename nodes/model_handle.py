"""``FireRedModel``: the value that travels on a ``FIRERED_MODEL`` socket.

ComfyUI caches node outputs and may feed one output to several branches, so a node must never change a model it
received. Like ComfyUI's own ``ModelPatcher.clone()``, a ``FireRedModel`` is an immutable *view*: the loaded
weights (``LoadedFireRed``, shared by every view of one load) plus the LoRA stack this view wants. The LoRA loader
returns a new view with one more LoRA; nothing touches the weights until a node runs the model, and then
``prepare()`` makes the shared transformer carry exactly this view's stack (unmerged adapters: detaching one is an
exact restore).

Memory: the encoder, transformer and VAE each get their own ComfyUI ``ModelPatcher`` (``weights_bundle``), and the
pipeline's placement asks ComfyUI for one of them at a time, as each phase of an edit starts
(``comfy_placement``), so ComfyUI can load the transformer partially and evict the encoder to make room for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import comfy_bridge

if TYPE_CHECKING:
    import torch
    from firered_core.lora import LoRAReport
    from firered_core.pipeline import FireRedEditPipeline

log = logging.getLogger(__name__)

SOCKET = "FIRERED_MODEL"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a stack. ``key`` names its adapters on the transformer: stack position, path and file stamp,
    so the same file twice in a stack, or a file rewritten since, never shares adapters with another entry."""

    path: str
    strength: float
    key: str

    @classmethod
    def for_file(cls, path: Path, strength: float, position: int) -> "LoraSpec":
        stat = path.stat()
        return cls(str(path), float(strength), f"{position}:{path.name}:{stat.st_size}:{stat.st_mtime_ns}")


@dataclass(eq=False)
class LoadedFireRed:
    """One load of a model: the pipeline, ComfyUI's patcher per component, reports of LoRAs applied so far."""

    pipeline: "FireRedEditPipeline"
    label: str
    patchers: dict[str, Any] = field(default_factory=dict)
    lora_reports: dict[str, "LoRAReport"] = field(default_factory=dict)

    @classmethod
    def wrap(cls, pipeline: "FireRedEditPipeline", label: str) -> "LoadedFireRed":
        """Register each component's weights with ComfyUI's model management and hand the pipeline a placement
        that loads them phase by phase (a no-op outside ComfyUI)."""
        if not comfy_bridge.in_comfyui():
            return cls(pipeline, label)
        from .comfy_placement import ComfyPlacement
        from .weights_bundle import containers

        patchers = {part: comfy_bridge.manage(module) for part, module in containers(pipeline).items()}
        pipeline.placement = ComfyPlacement(patchers, comfy_bridge.devices()[0])
        return cls(pipeline, label, patchers)

    @property
    def transformer_patcher(self) -> Any:
        return self.patchers.get("transformer")


@dataclass(frozen=True)
class FireRedModel:
    """A loaded FireRed model plus the LoRA stack to run it with (see the module docstring)."""

    loaded: LoadedFireRed
    loras: tuple[LoraSpec, ...] = ()

    @property
    def label(self) -> str:
        return self.loaded.label

    def with_lora(self, path: Path, strength: float) -> "FireRedModel":
        """A new view with the LoRA at ``path`` on top of this view's stack."""
        return dataclasses.replace(self, loras=self.loras + (LoraSpec.for_file(path, strength, len(self.loras)),))

    def lora_report(self, spec: LoraSpec) -> "LoRAReport | None":
        return self.loaded.lora_reports.get(spec.key)

    def prepare(self, *, training: bool = False) -> "FireRedEditPipeline":
        """The pipeline, with exactly this view's LoRAs attached. An edit's placement loads each component when it
        is used; ``training`` loads all of them whole first (the trainer computes where the weights are)."""
        self.sync_loras()
        if training:
            comfy_bridge.load_for_use(list(self.loaded.patchers.values()), full=True)
        return self.loaded.pipeline

    def sync_loras(self) -> None:
        """Attach, re-weight and detach adapters until the shared transformer carries exactly ``self.loras``."""
        from firered_core.lora import apply_lora, list_loras, remove_lora, set_strength

        transformer = self.loaded.pipeline.transformer
        wanted = {spec.key: spec for spec in self.loras}
        attached = list_loras(transformer)
        stale = attached.keys() - wanted.keys()
        missing = [spec for key, spec in wanted.items() if key not in attached]
        if stale or missing:
            comfy_bridge.weights_changed(self.loaded.transformer_patcher)
        for key in stale:
            remove_lora(transformer, key)
        for spec in missing:
            if not os.path.isfile(spec.path):
                raise FileNotFoundError(f"LoRA file {spec.path!r} no longer exists")
            self.loaded.lora_reports[spec.key] = apply_lora(transformer, spec.path, spec.strength, name=spec.key)
        for key, spec in wanted.items():
            if key in attached and attached[key] != spec.strength:
                set_strength(transformer, key, spec.strength)
