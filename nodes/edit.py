"""FireRed Edit: an instruction and 0-3 reference images in, the edited IMAGE and its LATENT out."""

from __future__ import annotations

import logging
from typing import Any

from . import edit_runner
from .common import CATEGORY, require_instruction
from .model_handle import SOCKET, FireRedModel

log = logging.getLogger(__name__)


def sampling_inputs() -> dict[str, tuple]:
    """Inputs every FireRed edit node shares (steps and CFG default to the model's own settings)."""
    return {
        "negative_prompt": ("STRING", {"multiline": True, "default": " ",
                                       "tooltip": "used by true CFG; empty turns true CFG off"}),
        "steps": ("INT", {"default": edit_runner.MODEL_STEPS, "min": edit_runner.MODEL_STEPS, "max": 1000,
                          "tooltip": "sampling steps; 0 = the model's own (10 for firered-default, 40 for the "
                                     "released models)"}),
        "true_cfg_scale": ("FLOAT", {"default": edit_runner.MODEL_CFG, "min": edit_runner.MODEL_CFG, "max": 100.0,
                                     "step": 0.1,
                                     "tooltip": "true classifier-free guidance; <= 1 turns it off; -1 = the model's "
                                                "own (off for firered-default, 4 for the released models)"}),
        "seed": ("INT", {"default": 0, "min": 0, "max": edit_runner.MAX_SEED, "control_after_generate": True,
                         "tooltip": "edit i of a batch uses seed + i"}),
        "width": ("INT", {"default": 0, "min": 0, "max": edit_runner.MAX_SIDE, "step": 16,
                          "tooltip": "0 = automatic: the model's default area at the last image's aspect, or that "
                                     "aspect when only height is given"}),
        "height": ("INT", {"default": 0, "min": 0, "max": edit_runner.MAX_SIDE, "step": 16,
                           "tooltip": "0 = automatic (follows width at the last image's aspect)"}),
    }


def keep_unedited_input() -> dict[str, tuple]:
    """The optional ``keep_unedited`` widget of the nodes that edit one picture locally (``EditSettings``)."""
    return {"keep_unedited": (list(edit_runner.KEEP_UNEDITED), {
        "default": "model default",
        "tooltip": "keep Picture 1's own pixels outside the area the edit changed (whole-image edits are left "
                   "alone); model default: on for firered-default, off for other models"})}


def sampler_input() -> dict[str, tuple]:
    """The optional ``sampler`` widget of every FireRed edit node (``EditSettings``)."""
    return {"sampler": (list(edit_runner.SAMPLERS), {
        "default": "model default",
        "tooltip": "stochastic: every step re-noises the predicted image with fresh seeded noise; euler: "
                   "deterministic steps; model default: the model's scheduler config (stochastic for "
                   "firered-default, euler for the released models)"})}


def reference_inputs() -> dict[str, tuple]:
    """The optional size-mode and reference-area widgets (``EditSettings``), appended after every other widget so
    saved workflows keep loading by position."""
    return {
        "size_mode": (list(edit_runner.SIZE_MODES), {
            "default": "model area",
            "tooltip": "model area: the model's default area at the last image's aspect (or width/height); match "
                       "Picture 1: the output has Picture 1's exact pixel size and lines up with it (no shift or "
                       "zoom; width and height must be 0)"}),
        "vae_ref_area": ("INT", {
            "default": edit_runner.MODEL_AREA, "min": edit_runner.MODEL_AREA, "max": edit_runner.MAX_AREA,
            "tooltip": "pixels each reference is resized to for the VAE, e.g. 1048576 = 1024x1024; 0 = the "
                       "model's own (its trained area)"}),
        "cond_ref_area": ("INT", {
            "default": edit_runner.MODEL_AREA, "min": edit_runner.MODEL_AREA, "max": edit_runner.MAX_AREA,
            "tooltip": "pixels each reference is resized to for the condition encoder, e.g. 147456 = 384x384; "
                       "0 = the encoder's own (384x384 for Qwen2.5-VL; firered-default's encoder reads no images)"}),
    }


class FireRedEdit:
    DESCRIPTION = ("Edits up to three images following an instruction (none: generates from the text). Refer to "
                   "the images as Picture 1, 2, 3 in the order of the connected inputs. An input with a batch of "
                   "B images makes B edits (seed + i for edit i); single images are shared by every edit.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("image", "latent")
    OUTPUT_TOOLTIPS = ("the edited images", "their latents (raw VAE latents, ComfyUI's layout)")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (SOCKET,),
                "instruction": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "what to change, e.g. 'make the sky purple'"}),
                **sampling_inputs(),
            },
            "optional": {
                **{f"image{i}": ("IMAGE",) for i in (1, 2, 3)},
                **keep_unedited_input(),
                **sampler_input(),
                **reference_inputs(),
            },
        }

    def edit(self, model: FireRedModel, instruction: str, negative_prompt: str, steps: int, true_cfg_scale: float,
             seed: int, width: int, height: int, image1: Any = None, image2: Any = None,
             image3: Any = None, keep_unedited: str = "model default",
             sampler: str = "model default", size_mode: str = "model area",
             vae_ref_area: int = edit_runner.MODEL_AREA,
             cond_ref_area: int = edit_runner.MODEL_AREA) -> tuple[Any, dict]:
        instruction = require_instruction(instruction)
        settings = edit_runner.EditSettings.from_inputs(negative_prompt, steps, true_cfg_scale, seed, width, height,
                                                        keep_unedited, sampler, size_mode, vae_ref_area,
                                                        cond_ref_area)
        batches = edit_runner.reference_batches([("image1", image1), ("image2", image2), ("image3", image3)])
        results = edit_runner.run_edits(model, batches, instruction, settings)
        return edit_runner.to_outputs(results, model.loaded.pipeline)


NODE_CLASSES = {"FireRedEdit": FireRedEdit}
DISPLAY_NAMES = {"FireRedEdit": "FireRed Edit"}
