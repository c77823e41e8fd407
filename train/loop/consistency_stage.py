"""The consistency (identity) loss as a part of the trainer's flow micro-steps (``consistency.enabled``).

::

    faces   = landmarks of each record's target, in its own pixels            FaceSource
              (the manifest's target_landmarks, or dlib on the target image the first time it is trained on)
    regions = alignment_from_landmarks(fit_points(faces, bucket dims), crop)  faces the bucket crop cuts off drop
    term    = consistency_terms(vae, features, x_t, v, s, target latents, regions) * batch.weight

``x_t``, ``v`` and ``s`` are the very tensors of the step's flow loss (``step.StepLoss``), so the term's gradient
reaches the transformer through the same forward pass; the ground truth is the decode of the target latents, so an
online run (pixels encoded here) and a latent-cache run see the same truth. The trainer adds the term to the flow
loss and logs, per window of micro-steps (summed over ranks): ``consistency_loss`` (the mean added term),
``consistency_faces`` (the share of samples with at least one face in their bucket crop) and
``consistency_active`` (the share with a face and a noise level below ``sigma_max``, i.e. a nonzero weight).

The setup is checked before anything heavy is built (``check_setup``): a missing feature file or one whose shapes
do not fit ``consistency.crop`` is a ``ConfigError`` naming ``consistency.features_path``; detected landmarks
without the ``face`` extra raise ``MissingExtraError`` naming it.

Public API: ``CONSISTENCY_METRICS``, ``FaceSource``, ``ConsistencyStage``, ``check_setup``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from firered_core.config import ConfigError
from firered_core.rewards.extras import import_extra
from firered_core.vae import FireRedVAE

from .consistency_step import consistency_terms
from .step import StepLoss
from .batch import TrainBatch
from ..config import ConsistencyConfig
from ..data.buckets import Dims
from ..data.pixels import fit_points
from ..data.record import BadSampleError, EditRecord
from ..model.face_features import FaceFeatureConfig, FaceFeatures, face_feature_config_of, load_face_features
from ..objectives.consistency import consistency_weight
from ..objectives.face_alignment import alignment_from_landmarks, detect_landmarks

log = logging.getLogger(__name__)

__all__ = ["CONSISTENCY_METRICS", "FaceSource", "ConsistencyStage", "check_setup"]

CONSISTENCY_METRICS = ("consistency_loss", "consistency_faces", "consistency_active")


def check_setup(config: ConsistencyConfig) -> FaceFeatureConfig:
    """The network shape of ``config.features_path`` (read from its tensor shapes). Raises a ``ConfigError`` naming
    the field when the file is missing or does not fit ``config.crop``, and ``MissingExtraError`` when landmarks
    are to be detected without the ``face`` extra."""
    assert config.features_path is not None  # ConsistencyConfig: required when enabled
    try:
        shape = face_feature_config_of(config.features_path, config.crop)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError; safetensors' header errors too
        raise ConfigError(f"consistency.features_path: {exc}") from exc
    if config.landmarks != "manifest":
        purpose = f"consistency.landmarks: {config.landmarks!r} (face detection on the ground truth)"
        import_extra("dlib", "face", purpose)
        import_extra("face_recognition_models", "face", purpose)
    return shape


class FaceSource:
    """Faces of each record's target: its manifest landmarks and/or dlib's eye centres, in the target's pixels."""

    def __init__(self, records: Sequence[EditRecord], landmarks: str) -> None:
        self.records, self.mode = records, landmarks
        self._detected: dict[int, list[np.ndarray]] = {}  # record index -> faces, detected once per run

    def faces(self, index: int) -> list[np.ndarray]:
        """``[K, 2]`` points of each face of record ``index``'s target (``[]``: no face)."""
        record = self.records[index]
        if record.target_landmarks and self.mode != "detect":
            return [np.asarray(face, dtype=np.float64) for face in record.target_landmarks]
        if self.mode == "manifest":
            return []
        if index not in self._detected:
            try:
                self._detected[index] = detect_landmarks(record.target.open(record.id))
            except BadSampleError as exc:  # the loader skipped it too; nothing to align
                log.warning("consistency: no face detection on %s: %s", record.id, exc)
                self._detected[index] = []
        return self._detected[index]

    def regions(self, indices: Sequence[int], dims: Dims, crop: int) -> list[list[torch.Tensor]]:
        """Per sample, the ``[2, 3]`` alignments of its faces in the ``dims`` bucket image the batch holds; a face
        with a landmark outside that image (cut off by the bucket's crop) is left out."""
        out = []
        for index in indices:
            record, regions = self.records[index], []
            for face in self.faces(index):
                points = fit_points(face, record.target_size, dims)
                inside = (points >= 0).all() and (points[:, 0] <= dims.width - 1).all() and \
                    (points[:, 1] <= dims.height - 1).all()
                if inside:
                    regions.append(alignment_from_landmarks(points, crop))
            out.append(regions)
        return out


class ConsistencyStage:
    """The frozen networks, the faces and the metric sums of one run's consistency term."""

    def __init__(self, config: ConsistencyConfig, vae: FireRedVAE, features: FaceFeatures, faces: FaceSource, *,
                 patch: int) -> None:
        self.config, self.vae, self.features, self.faces, self.patch = config, vae, features, faces, patch
        # sums of the window: added loss, micro-steps, samples with a face, of them active, samples
        self._sums = torch.zeros(5, dtype=torch.float64)

    @classmethod
    def build(cls, config: ConsistencyConfig, vae: FireRedVAE, records: Sequence[EditRecord], *, patch: int,
              device: torch.device) -> ConsistencyStage:
        """The stage of ``config`` (enabled): the feature network loaded frozen onto ``device``."""
        assert config.features_path is not None  # ConsistencyConfig: required when enabled
        # float32 whatever the run's dtypes: the crops are cast to it and the cosine is taken in it
        features = load_face_features(config.features_path, check_setup(config), device=device)
        log.info("consistency: eta %g below sigma %g, %d px face crops, landmarks from %s", config.eta,
                 config.sigma_max, config.crop, config.landmarks)
        return cls(config, vae, features, FaceSource(records, config.landmarks), patch=patch)

    def term(self, batch: TrainBatch, out: StepLoss) -> torch.Tensor:
        """``[]``: the consistency loss of the micro-step whose flow loss is ``out`` (times ``batch.weight``)."""
        if out.x_t is None or out.v is None:
            raise ValueError("the consistency term needs the step's x_t and v (step.step_loss hands them back)")
        f = self.vae.spatial_compression
        dims = Dims(batch.target.shape[-2] * f, batch.target.shape[-1] * f)
        regions = self.faces.regions(batch.indices, dims, self.config.crop)
        dtype = next(self.vae.parameters()).dtype  # the decode runs in the VAE's dtype (a bf16 VAE, fp32 tokens)
        terms = consistency_terms(self.vae, self.features, out.x_t.to(dtype), out.v.to(dtype), out.s,
                                  batch.target.to(dtype), regions, self.config, patch=self.patch)
        if batch.weight > 0:
            with_face = torch.tensor([bool(r) for r in regions], dtype=torch.float64)  # [B]
            active = with_face * (consistency_weight(out.s.cpu(), self.config) > 0)
            self._sums += torch.tensor([float(terms.loss.detach()), 1.0, float(with_face.sum()), float(active.sum()),
                                        float(len(regions))], dtype=torch.float64)
        return terms.loss * batch.weight

    def scalars(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """The window's ``CONSISTENCY_METRICS`` (``reduce`` sums a tensor over the ranks), then a fresh window."""
        sums, self._sums = reduce(self._sums).cpu(), torch.zeros_like(self._sums)
        loss, steps, faces, active, samples = sums.tolist()
        nan = float("nan")
        return {"consistency_loss": loss / steps if steps else nan, "consistency_faces": faces / samples if samples
                else nan, "consistency_active": active / samples if samples else nan}
