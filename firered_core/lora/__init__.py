"""LoRA for the FireRed / Qwen-Image transformer: read any common layout, apply unmerged or merged, train, save.

::

    from firered_core.lora import apply_lora, merge_lora, remove_lora, save_lora, load_lora

    report = apply_lora(transformer, "Lightning-8steps.safetensors", strength=1.0)   # -> LoRAReport
    report.unmatched                                                                  # keys that fit no layer
    save_lora(transformer, "copy.safetensors", name=report.name, format="comfyui")

==============  ==================================================================================================
``formats.py``  key layouts (diffusers/PEFT, ComfyUI, kohya, bare; alpha rules) -> ``LoRAWeights``, and back
``adapter.py``  ``LoRAAdapter``, the unmerged delta that ``ops.Linear.adapters`` adds to a layer's output
``apply.py``    attach / strength / switch off for a block / remove / merge / trainable adapters / export
``save.py``     atomic .safetensors writing in the layout ComfyUI (default), diffusers or kohya tools load
==============  ==================================================================================================
"""

from .adapter import INITS, LoRAAdapter
from .apply import (DEFAULT_TARGETS, LoRAReport, add_trainable_lora, apply_lora, collect_lora, list_loras,
                    lora_disabled, lora_state_dict, merge_lora, remove_lora, set_strength)
from .formats import (SAVE_FORMATS, LoRAEntry, LoRAError, LoRAWeights, encode_lora, load_lora,
                      parse_lora_state_dict, resolve)
from .save import save_lora

__all__ = ["LoRAAdapter", "INITS", "LoRAReport", "apply_lora", "set_strength", "remove_lora", "lora_disabled",
           "list_loras", "merge_lora", "add_trainable_lora", "DEFAULT_TARGETS", "collect_lora", "lora_state_dict",
           "LoRAError", "LoRAEntry", "LoRAWeights", "load_lora", "parse_lora_state_dict", "resolve", "encode_lora",
           "SAVE_FORMATS", "save_lora"]
