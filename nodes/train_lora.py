"""FireRed Train LoRA: edit pairs in, a LoRA file in ComfyUI's ``loras`` folder out, with its loss curve and a
preview.

The pairs come from a folder in the trainer's layout or from two IMAGE batches with instructions
(``train_lora_data``); the LoRA trains on the FIRERED_MODEL's transformer inside ComfyUI's process with the
project's trainer (``train_lora_run``), and is written under a checked name, never over an existing file unless
``overwrite`` is on (``train_lora_files``). Like core ComfyUI's training node it also returns the model with the
new LoRA on top, so one queued run can train and then edit with the result. ``resume`` continues an interrupted run from its newest checkpoint,
exactly as if it had not stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .common import CATEGORY, FireRedNodeError
from .model_handle import SOCKET, FireRedModel
from .train_lora_data import training_data
from .train_lora_files import LoraTarget
from .train_lora_run import LR_SCHEDULES, MAX_PREVIEW_STEPS, MAX_SEED, MAX_STEPS, LoraSettings, run_training

log = logging.getLogger(__name__)


class FireRedTrainLoRA:
    DESCRIPTION = ("Trains a LoRA on a FireRed model from edit pairs: a folder (x.png + x_target.png + x.txt, see "
                   "docs/DATA_FORMAT.md) or source/target IMAGE batches with one instruction per line. Writes "
                   "models/loras/<lora_name>.safetensors, never over an existing file unless overwrite is on. "
                   "Interrupting keeps a checkpoint; resume continues it exactly.")
    CATEGORY = f"{CATEGORY}/training"
    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE", SOCKET)
    RETURN_NAMES = ("lora_path", "loss_curve", "preview", "model")
    OUTPUT_TOOLTIPS = ("the written LoRA file", "training loss (and held-out loss) over steps",
                       "source | result | target of the first pair, sampled with the trained LoRA",
                       "the input model with the trained LoRA on top (strength 1): edit with it in the same run")
    FUNCTION = "train"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (SOCKET, {"tooltip": "the base; the LoRA trains on its transformer (with its LoRA stack)"}),
                "data_folder": ("STRING", {"default": "", "tooltip": "folder of edit pairs (absolute, or relative to "
                                           "ComfyUI's input folder); leave empty to train on the connected images"}),
                "instructions": ("STRING", {"multiline": True, "default": "",
                                            "tooltip": "for the connected images: one instruction per pair, or one "
                                                       "line for all (ignored with data_folder)"}),
                "steps": ("INT", {"default": 500, "min": 1, "max": MAX_STEPS}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                            "round": False}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 1024}),
                "alpha": ("FLOAT", {"default": 16.0, "min": 0.01, "max": 4096.0, "step": 0.5,
                                    "tooltip": "LoRA scale = alpha / rank"}),
                "resolution": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 16,
                                       "tooltip": "images are scaled to about resolution x resolution pixels, "
                                                  "aspect kept"}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 1024, "tooltip": "pairs per step"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                                 "tooltip": "LoRA init, noise, noise levels and data order"}),
                "lora_name": ("STRING", {"default": "firered_lora",
                                         "tooltip": "file name in models/loras (.safetensors is added)"}),
                "resume": ("BOOLEAN", {"default": False, "tooltip": "continue this LoRA's run from its newest "
                                       "checkpoint (same settings; steps may grow)"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "replace an existing LoRA file of this "
                                          "name, and start over a run that has checkpoints"}),
            },
            "optional": {
                "source_images": ("IMAGE", {"tooltip": "sources of the pairs (pair i = item i)"}),
                "target_images": ("IMAGE", {"tooltip": "edited results of the pairs, same batch size"}),
                "lr_schedule": (list(LR_SCHEDULES), {"default": "constant", "tooltip": "after the warm-up"}),
                "warmup_steps": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS}),
                "checkpoint_every": ("INT", {"default": 100, "min": 1, "max": MAX_STEPS,
                                             "tooltip": "steps between checkpoints (an interrupt saves one too)"}),
                "preview_every": ("INT", {"default": 0, "min": 0, "max": MAX_STEPS,
                                          "tooltip": "steps between preview samples; 0: at the start and end"}),
                "preview_steps": ("INT", {"default": 20, "min": 1, "max": MAX_PREVIEW_STEPS,
                                          "tooltip": "sampling steps of each preview"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model: FireRedModel, data_folder: str, instructions: str, steps: int, learning_rate: float,
              rank: int, alpha: float, resolution: int, batch_size: int, seed: int, lora_name: str, resume: bool,
              overwrite: bool, source_images: Any = None, target_images: Any = None, lr_schedule: str = "constant",
              warmup_steps: int = 0, checkpoint_every: int = 100, preview_every: int = 0, preview_steps: int = 20,
              unique_id: str | None = None) -> tuple[str, Any, Any, FireRedModel]:
        if not isinstance(model, FireRedModel):
            raise FireRedNodeError(f"model: expected a FIRERED_MODEL from FireRed Model Loader, got "
                                   f"{type(model).__name__}")
        settings = LoraSettings.from_inputs(steps, learning_rate, rank, alpha, resolution, batch_size, seed,
                                            lr_schedule, warmup_steps, checkpoint_every, preview_every,
                                            preview_steps)
        target = LoraTarget.plan(lora_name, bool(overwrite))
        with training_data(data_folder, source_images, target_images, instructions) as data:
            path, curve, preview = run_training(model, data, target, settings, bool(resume), unique_id)
        return path, curve, preview, model.with_lora(Path(path), 1.0)


NODE_CLASSES = {"FireRedTrainLoRA": FireRedTrainLoRA}
DISPLAY_NAMES = {"FireRedTrainLoRA": "FireRed Train LoRA"}
