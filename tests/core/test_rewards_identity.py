"""Face detection, identity similarity and the identity-edit score with the real dlib models (``face`` extra).

Faces: scikit-image's ``astronaut`` (Eileen Collins, public domain) and, as a different person, a face of
scikit-image's LFW subset (25 x 25 px, upscaled) pasted over hers. The HOG detector also fires weakly on her hand
(score ~0.1): ``min_score`` must drop it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib", reason="identity scoring needs the 'face' extra")
pytest.importorskip("face_recognition_models", reason="identity scoring needs the 'face' extra")
skdata = pytest.importorskip("skimage.data", reason="the face images come from scikit-image")

from firered_core.rewards.identity import SAME_PERSON_DISTANCE, DlibFaceEmbedder, identity_similarity  # noqa: E402
from firered_core.rewards.identity_edit import edit_strength, face_mask, score_identity_edit  # noqa: E402

FACE_AREA = (150, 50, 290, 190)  # around the astronaut's face in the 512 x 512 image


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def other_person(base: Image.Image, index: int = 1) -> Image.Image:
    """``base`` with an LFW face (another person) pasted over the astronaut's face."""
    face = (skdata.lfw_subset()[index] * 255).astype(np.uint8)
    side = FACE_AREA[2] - FACE_AREA[0]
    out = base.copy()
    out.paste(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC).convert("RGB"), FACE_AREA[:2])
    return out


def recoloured_background(base: Image.Image) -> Image.Image:
    """A strong edit away from the face: everything outside ``FACE_AREA`` colour-inverted."""
    out = ImageOps.invert(base)
    out.paste(base.crop(FACE_AREA), FACE_AREA[:2])
    return out


def test_one_face_found_and_the_hand_misfire_dropped(embedder: DlibFaceEmbedder, astronaut: Image.Image) -> None:
    faces = embedder.faces(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 160 < (x0 + x1) / 2 < 280 and 70 < (y0 + y1) / 2 < 170
    assert faces[0].embedding.shape == (128,) and faces[0].score > 0.5
    lenient = DlibFaceEmbedder(min_score=0.0).faces(astronaut)
    assert len(lenient) == 2 and lenient[1].score < 0.3  # the hand


def test_same_person_high_other_person_low(embedder: DlibFaceEmbedder, astronaut: Image.Image) -> None:
    source = embedder.faces(astronaut)
    same = identity_similarity(source, embedder.faces(astronaut))
    assert same.similarity == pytest.approx(1.0) and same.distance == pytest.approx(0.0) and same.same_person
    smaller = identity_similarity(source, embedder.faces(astronaut.resize((384, 384), Image.Resampling.LANCZOS)))
    assert smaller.similarity > 0.8 and smaller.same_person
    edited = identity_similarity(source, embedder.faces(recoloured_background(astronaut)))
    assert edited.similarity > 0.8 and edited.same_person
    other = identity_similarity(source, embedder.faces(other_person(astronaut)))
    assert other.distance > SAME_PERSON_DISTANCE and not other.same_person
    assert other.similarity < 0.5 < edited.similarity


def test_no_face_is_reported(embedder: DlibFaceEmbedder, astronaut: Image.Image) -> None:
    coffee = Image.fromarray(skdata.coffee())
    assert embedder.faces(coffee) == []
    none = identity_similarity([], embedder.faces(astronaut))
    assert none.similarity is None and none.same_person is None and "no face found in the source" in none.note
    lost = identity_similarity(embedder.faces(astronaut), [])
    assert lost.similarity == 0.0 and lost.same_person is False and "identity lost" in lost.note


def test_face_mask_and_edit_strength(embedder: DlibFaceEmbedder, astronaut: Image.Image) -> None:
    faces = embedder.faces(astronaut)
    mask = face_mask(astronaut.size, faces)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    cx, cy = [(a + b) // 2 for a, b in zip(faces[0].box[:2], faces[0].box[2:])]
    assert mask[cy, cx] == pytest.approx(1.0) and mask[500, 10] == 0.0
    half = face_mask((256, 256), faces, scale=(0.5, 0.5))
    assert half[cy // 2, cx // 2] == pytest.approx(1.0)
    assert edit_strength(astronaut, astronaut, mask) == 0.0
    assert edit_strength(astronaut, recoloured_background(astronaut), mask) > 0.3
    face_only = other_person(astronaut)
    assert edit_strength(astronaut, face_only, mask) < 0.01 < edit_strength(astronaut, face_only)


def test_identity_edit_score_prefers_a_real_edit_that_keeps_the_face(embedder: DlibFaceEmbedder,
                                                                    astronaut: Image.Image) -> None:
    faces = embedder.faces(astronaut)
    unchanged = score_identity_edit(astronaut, faces, astronaut, embedder=embedder)
    edited = score_identity_edit(astronaut, faces, recoloured_background(astronaut), embedder=embedder)
    swapped = score_identity_edit(astronaut, faces, recoloured_background(other_person(astronaut)),
                                  embedder=embedder)
    assert unchanged.strength == 0.0 and unchanged.score == pytest.approx(0.7)
    assert edited.score > unchanged.score > swapped.score
    no_face = score_identity_edit(astronaut, [], recoloured_background(astronaut), embedder=embedder)
    assert no_face.identity.similarity is None and no_face.score == 1.0  # edit strength alone
