"""FireRed Multi-Image Edit: more than three pictures, stitched into <= 3 composites the model can take.

Pictures come from ``image1`` .. ``image8``; every item of an input's batch is one picture, numbered in input
order then batch order (so one "Image Batch" of 5 pictures works as well as five inputs). With at most
``max_composites`` pictures they go to the model unchanged. With more, ``composite.make_composites`` crops and
stitches them (picture 1, the scene, stays whole; see its docstring) and ``reference_rewrite`` points the
instruction's "Picture N" / "图N" at the composites. Setting ``vlm_endpoint`` lets a vision-language model choose
the crops instead of the local heuristic (``vlm_hook``); it names one of the servers the server's owner allows
(``vlm_endpoints``), checked before any picture is read. Automatic output size follows picture 1's aspect, not
the last composite's; size mode "match Picture 1" makes picture 1's own size, aligned with it. One edit is made
(seed as given).

Outputs: the edited IMAGE and LATENT, the instruction as sent to the model, and the composites (padded with
white to one size so they form an IMAGE batch) to check what the model saw.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from . import edit_runner
from .common import CATEGORY, FireRedNodeError, pils_to_tensor, require_instruction, tensor_to_pils
from .edit import reference_inputs, sampler_input, sampling_inputs
from .model_handle import SOCKET, FireRedModel

if TYPE_CHECKING:
    from .vlm_endpoints import Target

log = logging.getLogger(__name__)

MAX_INPUTS = 8


class FireRedMultiImage:
    DESCRIPTION = ("Edits with more than three pictures: picture 1 stays whole, the others are cropped to their "
                   "subject and stitched so the model sees at most three images; 'Picture N' in the instruction "
                   "is rewritten to match. Optional: a vision-language model (an endpoint configured on the "
                   "server, or a loopback URL) picks the crops.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("image", "latent", "instruction", "composites")
    OUTPUT_TOOLTIPS = ("the edited image", "its latent", "the instruction as rewritten for the composites",
                       "the composite images the model saw")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (SOCKET,),
                "instruction": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "refer to pictures as Picture 1..N or 图1..N"}),
                "image1": ("IMAGE", {"tooltip": "picture 1 (a batch counts as several pictures)"}),
                **sampling_inputs(),
                "max_composites": ("INT", {"default": 3, "min": 1, "max": 3}),
            },
            "optional": {
                **{f"image{i}": ("IMAGE",) for i in range(2, MAX_INPUTS + 1)},
                "vlm_endpoint": ("STRING", {"default": "", "tooltip": "empty = local heuristic crops; else the name "
                                            "of a VLM endpoint configured on this server, or a loopback "
                                            "OpenAI-compatible URL such as http://127.0.0.1:8000/v1"}),
                "vlm_model": ("STRING", {"default": "", "tooltip": "model name sent to the VLM endpoint"}),
                **sampler_input(),
                **reference_inputs(),
            },
        }

    def edit(self, model: FireRedModel, instruction: str, image1: Any, negative_prompt: str, steps: int,
             true_cfg_scale: float, seed: int, width: int, height: int, max_composites: int,
             vlm_endpoint: str = "", vlm_model: str = "", sampler: str = "model default",
             size_mode: str = "model area", vae_ref_area: int = edit_runner.MODEL_AREA,
             cond_ref_area: int = edit_runner.MODEL_AREA, **images: Any) -> tuple[Any, dict, str, Any]:
        from firered_core.images import calculate_dimensions

        from .composite import make_composites
        from .reference_rewrite import rewrite_for_composites

        instruction = require_instruction(instruction)
        settings = edit_runner.EditSettings.from_inputs(negative_prompt, steps, true_cfg_scale, seed, width, height,
                                                        sampler=sampler, size_mode=size_mode,
                                                        vae_ref_area=vae_ref_area, cond_ref_area=cond_ref_area)
        if isinstance(max_composites, bool) or max_composites not in (1, 2, 3):
            raise FireRedNodeError(f"max_composites must be 1, 2 or 3, got {max_composites!r}")
        target = _vlm_target(vlm_endpoint, vlm_model)
        pictures = _pictures(image1, images)
        boxes = None
        if target is not None and len(pictures) > max_composites:
            from .vlm_hook import ask_boxes

            boxes = ask_boxes(target, vlm_model.strip(), instruction, pictures)
        plan = make_composites(pictures, max_composites, boxes)
        rewritten = rewrite_for_composites(instruction, plan.placements)
        if settings.size_mode == "match" and plan.images[0].size != pictures[0].size:
            raise FireRedNodeError(f"size_mode 'match Picture 1': picture 1 was stitched with others into one "
                                   f"composite (max_composites={max_composites}); use 2 or 3 so it stays whole")
        log.info("FireRed Multi-Image: %d pictures -> %d composites; instruction: %s", len(pictures),
                 len(plan.images), rewritten)
        if settings.size_mode == "area" and (settings.width is None or settings.height is None):
            auto_w, auto_h = calculate_dimensions(model.loaded.pipeline.output_area,
                                                  pictures[0].width / pictures[0].height)
            settings = dataclasses.replace(settings, width=settings.width or auto_w,
                                           height=settings.height or auto_h)
        results = edit_runner.run_edits(model, [plan.images], rewritten, settings, "FireRed Multi-Image")
        image, latent = edit_runner.to_outputs(results, model.loaded.pipeline)
        return image, latent, rewritten, pils_to_tensor(_pad_to_common_size(plan.images))


def _pictures(image1: Any, extra: dict[str, Any]) -> list:
    unknown = sorted(set(extra) - {f"image{i}" for i in range(2, MAX_INPUTS + 1)})
    if unknown:
        raise FireRedNodeError(f"unknown inputs: {', '.join(unknown)}")
    if image1 is None:
        raise FireRedNodeError("image1 is required")
    pictures = tensor_to_pils(image1, "image1")
    for i in range(2, MAX_INPUTS + 1):
        if extra.get(f"image{i}") is not None:
            pictures += tensor_to_pils(extra[f"image{i}"], f"image{i}")
    return pictures


def _vlm_target(endpoint: Any, model_name: Any) -> Target | None:
    """Where the VLM request would go, checked against the server's endpoint policy before any picture is read."""
    if not isinstance(endpoint, str) or not isinstance(model_name, str):
        raise FireRedNodeError("vlm_endpoint and vlm_model must be text")
    if not endpoint.strip():
        return None
    from .vlm_endpoints import load_policy

    return load_policy().resolve(endpoint)


def _pad_to_common_size(images: list) -> list:
    from PIL import Image

    width, height = max(i.width for i in images), max(i.height for i in images)
    padded = []
    for img in images:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(img, (0, 0))
        padded.append(canvas)
    return padded


NODE_CLASSES = {"FireRedMultiImage": FireRedMultiImage}
DISPLAY_NAMES = {"FireRedMultiImage": "FireRed Multi-Image Edit"}
