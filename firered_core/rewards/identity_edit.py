"""Ranking identity-preserving edits: keep the face, but do make the edit.

A candidate that changes nothing keeps the identity perfectly, so identity similarity alone would pick the
laziest candidate. The score therefore adds how much the candidate changed *outside* the faces:

    strength = mean |candidate - source| over pixels outside the (grown) face boxes, channels in [0, 1]
    edit     = min(1, strength / strength_target)
    score    = (w_identity * similarity + w_edit * edit) / (w_identity + w_edit)

``similarity`` comes from ``identity.identity_similarity``. The source is resized to the candidate's size first
(the pipeline's output size need not match the input's). Without a face in the source the score is ``edit`` alone
and ``IdentityEditScore.identity`` says why.

``face_mask`` is the soft mask of the face regions (boxes grown by ``grow`` of their size, edges feathered) that
both the strength measure and the face-preserving latent blend (``region_blend``) use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .identity import DlibFaceEmbedder, Face, IdentityScore, default_embedder, identity_similarity

__all__ = ["IdentityEditConfig", "IdentityEditScore", "face_mask", "edit_strength", "score_identity_edit"]


@dataclass(frozen=True)
class IdentityEditConfig:
    """Weights of the ranking score (tunable; the FireRed report publishes none for reranking)."""

    w_identity: float = 0.7  # identity similarity weight
    w_edit: float = 0.3  # edit strength weight
    strength_target: float = 0.08  # mean absolute change outside the faces that counts as a full edit
    grow: float = 0.25  # face boxes are grown by this fraction of their size on each side (hair, chin, ears)
    feather: float = 0.1  # mask edge blur, as a fraction of the face size

    def __post_init__(self) -> None:
        if self.w_identity < 0 or self.w_edit < 0 or self.w_identity + self.w_edit <= 0:
            raise ValueError(f"w_identity and w_edit must be >= 0 and not both 0, got {self.w_identity}, "
                             f"{self.w_edit}")
        if self.strength_target <= 0 or self.grow < 0 or self.feather < 0:
            raise ValueError("strength_target must be > 0, grow and feather >= 0")


@dataclass(frozen=True)
class IdentityEditScore:
    score: float
    identity: IdentityScore
    strength: float  # mean absolute change outside the faces, in [0, 1]


def face_mask(size: tuple[int, int], faces: Sequence[Face], *, grow: float = 0.25, feather: float = 0.1,
              scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A float32 mask [H, W] of ``size`` = (W, H): 1 on the grown face boxes, 0 elsewhere, feathered edges.

    ``scale`` maps face boxes found in another image (e.g. the source) into this frame.
    """
    width, height = size
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    radius = 0.0
    for face in faces:
        x0, y0, x1, y1 = (face.box[0] * scale[0], face.box[1] * scale[1], face.box[2] * scale[0],
                          face.box[3] * scale[1])
        gw, gh = (x1 - x0) * grow, (y1 - y0) * grow
        draw.ellipse((x0 - gw, y0 - 1.5 * gh, x1 + gw, y1 + gh), fill=255)  # more room above: forehead and hair
        radius = max(radius, feather * max(x1 - x0, y1 - y0))
    if radius > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(mask, dtype=np.float32) / 255.0


def edit_strength(source: Image.Image, candidate: Image.Image, mask: np.ndarray | None = None) -> float:
    """Mean absolute pixel change (0..1) from ``source`` to ``candidate``, weighted by ``1 - mask``."""
    src = np.asarray(source.convert("RGB").resize(candidate.size, Image.Resampling.LANCZOS), np.float32) / 255.0
    cand = np.asarray(candidate.convert("RGB"), np.float32) / 255.0
    diff = np.abs(cand - src).mean(axis=-1)  # [H, W]
    weight = np.ones_like(diff) if mask is None else 1.0 - mask
    total = float(weight.sum())
    return float((diff * weight).sum() / total) if total > 0 else 0.0


def score_identity_edit(source: Image.Image, source_faces: Sequence[Face], candidate: Image.Image, *,
                        embedder: DlibFaceEmbedder | None = None,
                        config: IdentityEditConfig | None = None) -> IdentityEditScore:
    """The ranking score of ``candidate`` (see the module docstring); ``source_faces`` from ``embedder.faces``."""
    cfg = config or IdentityEditConfig()
    candidate_faces = (embedder or default_embedder()).faces(candidate) if source_faces else []
    identity = identity_similarity(source_faces, candidate_faces)
    scale = (candidate.width / source.width, candidate.height / source.height)
    mask = face_mask(candidate.size, source_faces, grow=cfg.grow, feather=cfg.feather, scale=scale)
    strength = edit_strength(source, candidate, mask)
    edit = min(1.0, strength / cfg.strength_target)
    if identity.similarity is None:
        return IdentityEditScore(score=edit, identity=identity, strength=strength)
    score = (cfg.w_identity * identity.similarity + cfg.w_edit * edit) / (cfg.w_identity + cfg.w_edit)
    return IdentityEditScore(score=score, identity=identity, strength=strength)
