"""FireRed Text Edit: write the quoted text into the image, keep it where the old text was, pick the best of N.

The instruction names the new text in quotes (``Change the sign to "OPEN"``, ``把“促销”改成“新品”``; old text
optional, also settable as ``old_text``). The source is read by OCR to find the line being edited; N candidates
(seeds ``seed .. seed + N - 1``) are generated and each is scored by the layout-aware OCR reward of
``firered_core.rewards.ocr_layout`` (the same code the RL stage uses): text correctness, gated by agreement of
character positions and glyph sizes with the old text. Outputs: the best candidate, its reward, an overlay of
what OCR found on it, and a one-line-per-candidate report. Needs the ``ocr`` extra (rapidocr).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import edit_runner
from .common import CATEGORY, FireRedNodeError, pils_to_tensor, require_instruction, tensor_to_pils
from .edit import keep_unedited_input, reference_inputs, sampler_input, sampling_inputs
from .model_handle import SOCKET, FireRedModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

MAX_CANDIDATES = 64


def candidate_count(value: Any) -> int:
    """The number of candidates asked for, checked (shared with the identity node)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CANDIDATES:
        raise FireRedNodeError(f"candidates must be an integer in [1, {MAX_CANDIDATES}], got {value!r}")
    return value


def single_source(image: Any, name: str = "image") -> "Image.Image":
    """The one source image of an IMAGE input; a batch is refused (each source needs its own candidates)."""
    sources = tensor_to_pils(image, name)
    if len(sources) != 1:
        raise FireRedNodeError(f"{name}: connect one image (an IMAGE batch of 1), got a batch of {len(sources)}; "
                               "this node ranks candidates of a single source")
    return sources[0]


def candidate_inputs() -> dict[str, tuple]:
    return {"candidates": ("INT", {"default": 4, "min": 1, "max": MAX_CANDIDATES,
                                   "tooltip": "edits to generate (seeds seed..seed+N-1); the best one is returned"})}


class FireRedTextEdit:
    DESCRIPTION = ("Edits text in an image: put the new text in quotes in the instruction. Generates N candidates, "
                   "reads each with OCR and returns the one where the new text is correct, where the old text was "
                   "and at its size (layout-aware OCR reward).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT", "IMAGE", "STRING")
    RETURN_NAMES = ("image", "score", "overlay", "report")
    OUTPUT_TOOLTIPS = ("the best candidate", "its OCR layout reward in [0, 1]",
                       "the best candidate with the OCR boxes drawn (green: matched, blue: source line)",
                       "the score of every candidate")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (SOCKET,),
                "image": ("IMAGE",),
                "instruction": ("STRING", {"multiline": True, "default": 'Change the text to "HELLO"',
                                           "tooltip": "the new text in quotes, e.g. Replace \"SALE\" with \"NEW\""}),
                **candidate_inputs(),
                **sampling_inputs(),
            },
            "optional": {
                "old_text": ("STRING", {"default": "", "tooltip": "the text being replaced, when the instruction "
                                                                  "does not quote it (helps find the source line)"}),
                **keep_unedited_input(),
                **sampler_input(),
                **reference_inputs(),
            },
        }

    def edit(self, model: FireRedModel, image: Any, instruction: str, candidates: int, negative_prompt: str,
             steps: int, true_cfg_scale: float, seed: int, width: int, height: int,
             old_text: str = "", keep_unedited: str = "model default", sampler: str = "model default",
             size_mode: str = "model area", vae_ref_area: int = edit_runner.MODEL_AREA,
             cond_ref_area: int = edit_runner.MODEL_AREA) -> tuple["torch.Tensor", float, "torch.Tensor", str]:
        from firered_core.rewards import MissingExtraError, parse_text_edit
        from firered_core.rewards.ocr_layout import locate_source_text, score_candidate
        from firered_core.rewards.overlay import draw_layout_overlay

        instruction = require_instruction(instruction)
        request = parse_text_edit(instruction)
        if request is None:
            raise FireRedNodeError('instruction: put the new text in quotes, e.g. Change the sign to "OPEN" '
                                   "(also “...”, '...', 「...」, 《...》)")
        count = candidate_count(candidates)
        settings = edit_runner.EditSettings.from_inputs(negative_prompt, steps, true_cfg_scale, seed, width, height,
                                                        keep_unedited, sampler, size_mode, vae_ref_area,
                                                        cond_ref_area)
        source = single_source(image)
        old = (old_text or "").strip() or request.old
        try:  # read the source before generating: a missing extra fails fast
            located = locate_source_text(source, request.new, old_text=old)
        except MissingExtraError as exc:
            raise FireRedNodeError(f"FireRed Text Edit: {exc}") from exc
        log.info("text edit: want %r (%s)", located.expected, located.note)
        results = edit_runner.run_edits(model, [[source]] * count, instruction, settings, what="FireRed Text Edit")
        scores = [score_candidate(located, r.image) for r in results]
        best = max(range(count), key=lambda i: (scores[i].reward, -i))
        report = "\n".join(f"{'*' if i == best else ' '} seed {r.seed}: reward {s.reward:.3f} (text {s.text:.2f}, "
                           f"position {_fmt(s.position)}, size {_fmt(s.size)}, read {_read(s)})"
                           for i, (r, s) in enumerate(zip(results, scores)))
        report = f"want {located.expected!r}; {located.note}\n{report}"
        log.info("text edit scores:\n%s", report)
        chosen = results[best].image
        overlay = draw_layout_overlay(chosen, scores[best])
        return pils_to_tensor([chosen]), float(scores[best].reward), pils_to_tensor([overlay]), report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _read(score: Any) -> str:
    return repr(score.matched.text) if score.matched is not None else "no text"


NODE_CLASSES = {"FireRedTextEdit": FireRedTextEdit}
DISPLAY_NAMES = {"FireRedTextEdit": "FireRed Text Edit (OCR-aware)"}
