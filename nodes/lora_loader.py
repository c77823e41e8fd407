"""FireRed LoRA Loader: one LoRA on top of a FIRERED_MODEL's stack, with a report of the keys that fit nothing.

Stackable (chain loaders), any strength (negative too), every layout the core reads (diffusers/PEFT, ComfyUI,
kohya, bare keys). The model received is never changed: the output is a new view with one more LoRA (see
``model_handle``). The LoRA is attached right away so that a file for another architecture, or with other
shapes, fails here with the core's message instead of later in the edit.
"""

from __future__ import annotations

import logging
import math

from . import comfy_bridge
from .common import CATEGORY, FireRedNodeError, node_errors
from .model_handle import SOCKET, FireRedModel

log = logging.getLogger(__name__)

MAX_LISTED = 20  # unmatched keys named in the report; the rest are counted


class FireRedLoraLoader:
    DESCRIPTION = ("Adds a LoRA from models/loras to a FireRed model (unmerged; chain several to stack them). "
                   "The report names every LoRA key that matched no layer of the model.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (SOCKET, "STRING")
    RETURN_NAMES = ("model", "report")
    OUTPUT_TOOLTIPS = ("the model with this LoRA added to its stack",
                       "layers changed and keys that matched nothing")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (SOCKET,),
            "lora_name": (comfy_bridge.model_files("loras"), {"tooltip": "a .safetensors LoRA from models/loras"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        }}

    def load_lora(self, model: FireRedModel, lora_name: str, strength: float) -> tuple[FireRedModel, str]:
        if not isinstance(model, FireRedModel):
            raise FireRedNodeError(f"model: expected a FIRERED_MODEL from FireRed Model Loader, got "
                                   f"{type(model).__name__}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise FireRedNodeError(f"strength must be a finite number, got {strength!r}")
        path = comfy_bridge.resolve_model_file("loras", lora_name, "lora_name")
        stacked = model.with_lora(path, float(strength))
        with node_errors(f"FireRed LoRA Loader ({path.name})"):
            stacked.sync_loras()
        report = stacked.lora_report(stacked.loras[-1])
        return stacked, _describe(path.name, strength, report)


def _describe(name: str, strength: float, report: object) -> str:
    if report is None:  # applied by an earlier run of this view; nothing new to say
        return f"{name} at strength {strength:g}: applied"
    unmatched = list(getattr(report, "unmatched", []))
    head = (f"{name} ({getattr(report, 'style', '?')} layout) at strength {strength:g}: "
            f"{getattr(report, 'applied', 0)} layers changed")
    if not unmatched:
        return f"{head}; every key matched a layer"
    listed = "\n".join(f"  {k}" for k in unmatched[:MAX_LISTED])
    more = f"\n  ... and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
    keys = "1 key" if len(unmatched) == 1 else f"{len(unmatched)} keys"
    return f"{head}; {keys} matched no layer and were ignored:\n{listed}{more}"


NODE_CLASSES = {"FireRedLoraLoader": FireRedLoraLoader}
DISPLAY_NAMES = {"FireRedLoraLoader": "FireRed LoRA Loader"}
