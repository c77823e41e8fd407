"""Rewards that score edited images: one implementation for the RL stage and the ComfyUI nodes.

- ``ocr_layout``: the layout-aware OCR reward (is the requested text there, where the old text was, at the old
  size?) at character level, over ``ocr_reader`` (RapidOCR, extra ``ocr``), ``text_match`` (edit distances and
  their alignment), ``text_boxes`` (detections), ``char_layout`` (character boxes, reference layout, penalties) and
  ``layout_config`` (its settings); ``ocr_rewards`` scores a batch for the training stages; ``quoted_text`` reads
  the requested text out of an instruction; ``overlay`` draws what was found.
- ``vlm_judge``: the VLM judge (``judge_scores``), a rating read as the probability-weighted expectation over the
  rating tokens (``rating_tokens``), averaged over K passes, from an OpenAI-compatible server (``chat_client``,
  standard library only) or a local transformers model (``local_judge``).
- ``identity``: face detection and identity embedding (dlib, extra ``face``); ``identity_edit`` ranks identity-
  preserving edits (identity kept, edit made); ``region_blend`` keeps a face from the source by latent blending.

Importing this package loads neither OCR nor face models nor their libraries; a missing extra is reported by the
first call that needs it (``MissingExtraError``).

    from firered_core.rewards import ocr_layout_reward, parse_text_edit
    request = parse_text_edit('Change "OPEN" to "CLOSED"')         # TextEditRequest(new='CLOSED', old='OPEN')
    score = ocr_layout_reward(source, candidate, request.new, old_text=request.old)
    score.reward, score.text, score.position, score.size
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MissingExtraError": "extras",
    "parse_text_edit": "quoted_text",
    "quoted_strings": "quoted_text",
    "TextEditRequest": "quoted_text",
    "text_accuracy": "text_match",
    "TextBox": "text_boxes",
    "RapidOcrReader": "ocr_reader",
    "default_reader": "ocr_reader",
    "LayoutRewardConfig": "layout_config",
    "LayoutScore": "ocr_layout",
    "SourceText": "ocr_layout",
    "locate_source_text": "ocr_layout",
    "score_candidate": "ocr_layout",
    "ocr_layout_reward": "ocr_layout",
    "ocr_rewards": "ocr_layout",
    "CharLayout": "char_layout",
    "draw_layout_overlay": "overlay",
    "Face": "identity",
    "FaceLandmarks": "identity",
    "IdentityScore": "identity",
    "DlibFaceEmbedder": "identity",
    "default_embedder": "identity",
    "identity_similarity": "identity",
    "IdentityEditConfig": "identity_edit",
    "IdentityEditScore": "identity_edit",
    "face_mask": "identity_edit",
    "edit_strength": "identity_edit",
    "score_identity_edit": "identity_edit",
    "blend_latents": "region_blend",
    "encode_source": "region_blend",
    "keep_region": "region_blend",
    "ChatClient": "chat_client",
    "JudgeError": "chat_client",
    "JudgeUnreachable": "chat_client",
    "RatingScale": "rating_tokens",
    "rating_expectation": "rating_tokens",
    "parse_rating": "rating_tokens",
    "JudgeConfig": "vlm_judge",
    "ChatJudge": "vlm_judge",
    "judge_scores": "vlm_judge",
    "TransformersJudge": "local_judge",
    "load_local_judge": "local_judge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'firered_core.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
