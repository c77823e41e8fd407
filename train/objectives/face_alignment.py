"""Face alignment for the consistency loss: landmarks -> a 2x3 similarity transform onto a canonical template.

The template is the five-point layout ArcFace-style recognisers are trained on, in a 112 x 112 crop (pixel
coordinates, pixel centres at integers, the convention of ``cv2.warpAffine`` and of kornia's ``warp_affine`` with
``align_corners=True``)::

    left eye (38.2946, 51.6963)   right eye (73.5318, 51.5014)   nose tip (56.0252, 71.7366)
    left mouth corner (41.5493, 92.3655)   right mouth corner (70.7299, 92.2041)

"left" is the eye on the image's left. A crop of another size scales the template by ``crop / 112``.
``alignment_from_landmarks`` takes 2 (eyes), 3 (eyes, nose tip) or 5 points in that order and solves the
least-squares similarity (Umeyama 1991: rotation, uniform scale, translation; no reflection) mapping them onto the
template; with two points it is exact.

``find_regions`` detects faces on the ground-truth image with ``firered_core.rewards.identity`` (dlib, the ``face``
extra). dlib's five-point model gives the corners of both eyes and the *base* of the nose, not the tip the template
means, so only the two eye centres are used (``detect_landmarks`` returns them): an exact two-point similarity, no
bias from the nose's offset.

Public API: ``ARCFACE_TEMPLATE``, ``template_points``, ``alignment_from_landmarks``, ``shift_alignment``,
``sampled_box``, ``detect_landmarks``, ``find_regions``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from firered_core.rewards.identity import default_embedder

__all__ = ["ARCFACE_TEMPLATE", "template_points", "alignment_from_landmarks", "shift_alignment", "sampled_box",
           "detect_landmarks", "find_regions"]

TEMPLATE_SIZE = 112
ARCFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                    (70.7299, 92.2041))
_SUBSETS = {2: (0, 1), 3: (0, 1, 2), 5: (0, 1, 2, 3, 4)}


def template_points(n_points: int, crop: int) -> torch.Tensor:
    """``[n_points, 2]`` float64: the template's first ``n_points`` (2, 3 or 5) points scaled to a ``crop`` crop."""
    if n_points not in _SUBSETS:
        raise ValueError(f"n_points must be one of {sorted(_SUBSETS)} (eyes; eyes + nose; all five), got {n_points}")
    if crop <= 0:
        raise ValueError(f"crop must be a positive size in pixels, got {crop}")
    points = torch.tensor([ARCFACE_TEMPLATE[i] for i in _SUBSETS[n_points]], dtype=torch.float64)
    return points * (crop / TEMPLATE_SIZE)


def alignment_from_landmarks(landmarks: torch.Tensor | np.ndarray, crop: int) -> torch.Tensor:
    """``[2, 3]`` float64 similarity ``M`` with ``M @ [x, y, 1] ~= template`` for landmarks ``[K, 2]`` (K = 2, 3, 5).

    The least-squares similarity (Umeyama): centre both point sets, ``S = dst_c^T src_c``, rotation from the SVD of
    ``S`` (sign-corrected so it never reflects), scale ``trace(D S') / var(src)``, translation from the centroids.
    """
    src = torch.as_tensor(np.asarray(landmarks), dtype=torch.float64)
    if src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"landmarks must be [K, 2] (x, y) points, got shape {tuple(src.shape)}")
    dst = template_points(src.shape[0], crop)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = (src_c**2).sum() / src.shape[0]
    if variance <= 1e-12:
        raise ValueError("landmarks must not all coincide (a similarity needs two distinct points)")
    u, singular, vh = torch.linalg.svd(dst_c.T @ src_c / src.shape[0])  # [2, 2] covariance
    d = torch.ones(2, dtype=torch.float64)
    if torch.det(u) * torch.det(vh) < 0:
        d[1] = -1.0  # the best orthogonal map would reflect: take the best rotation instead
    rotation = u @ torch.diag(d) @ vh
    scale = (singular * d).sum() / variance
    translation = dst_mean - scale * rotation @ src_mean
    return torch.cat([scale * rotation, translation[:, None]], dim=1)


def shift_alignment(matrix: torch.Tensor, origin: tuple[int, int]) -> torch.Tensor:
    """The transform ``matrix`` (image coordinates -> crop) for a cut-out whose top-left pixel is ``origin`` (x, y)
    of the image: ``M' p = M (p + origin)``, so a region found on the full image applies to a decoded crop."""
    shifted = matrix.clone()
    shifted[..., :, 2] = matrix[..., :, 2] + matrix[..., :, :2] @ matrix.new_tensor(origin)
    return shifted


def sampled_box(matrices: Sequence[torch.Tensor], crop: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), x1/y1 exclusive: the image pixels a bilinear warp by any of ``matrices`` into a ``crop``
    crop reads (the crop's corners mapped back, widened to the next pixel), clipped to the image."""
    corners = torch.tensor([[0, 0], [crop - 1, 0], [0, crop - 1], [crop - 1, crop - 1]], dtype=torch.float64)
    points = []
    for matrix in matrices:
        m = torch.as_tensor(matrix, dtype=torch.float64)
        points.append((corners - m[:, 2]) @ torch.linalg.inv(m[:, :2]).T)  # crop -> image coordinates
    found = torch.cat(points)
    lo, hi = found.min(0).values.floor(), found.max(0).values.floor() + 2  # bilinear reads floor(x) and floor(x)+1
    x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
    x1, y1 = min(width, int(hi[0])), min(height, int(hi[1]))
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"the regions sample nothing inside the {width}x{height} image (box {x0, y0, x1, y1})")
    return x0, y0, x1, y1


def _eye_centres(points: np.ndarray) -> np.ndarray:
    """``[2, 2]``: the two eye centres of dlib's five points (corners 0-1 and 2-3), the image's left one first."""
    centres = np.stack([points[0:2].mean(0), points[2:4].mean(0)])
    return centres[np.argsort(centres[:, 0])]


def detect_landmarks(gt_image: Image.Image) -> list[np.ndarray]:
    """The two eye centres ``[2, 2]`` (x, y; the image's left eye first) of each face dlib finds on the ground
    truth, best detection first; ``[]`` without a face. Raises ``MissingExtraError`` without the ``face`` extra."""
    return [_eye_centres(face.points) for face in default_embedder().landmarks(gt_image)]


def find_regions(gt_image: Image.Image, crop: int) -> list[torch.Tensor]:
    """Alignment transforms ``[2, 3]`` (image -> ``crop`` x ``crop`` template) of the faces dlib finds on the
    ground truth, best detection first; ``[]`` without a face. Raises ``MissingExtraError`` without the ``face``
    extra."""
    return [alignment_from_landmarks(eyes, crop) for eyes in detect_landmarks(gt_image)]
