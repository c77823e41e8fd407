"""Helpers every FireRed node shares: IMAGE tensors <-> PIL, the node error type, input checks.

ComfyUI's IMAGE is a float32 tensor ``[B, H, W, C]`` in [0, 1] with C = 3 (RGB). Nodes hand the core PIL images,
so the conversion lives here once. Accepted channel counts: 3 (RGB), 1 (grey, replicated) and 4 (RGBA,
composited over white like ``firered_core.images.ensure_rgb`` does for files). Anything else - a 3-D tensor, 2
channels, NaN, a side under 16 px - is a ``FireRedNodeError`` naming the input and the problem.

torch is imported inside the functions: importing the plugin must stay cheap (ComfyUI imports every plugin at
start-up, and the import-time benchmark checks it).

Public names (other node modules import them; keep them stable): ``FireRedNodeError``, ``tensor_to_pils``,
``pils_to_tensor``, ``require_instruction``, ``require_image``, ``node_errors``.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

MIN_SIDE = 16  # px; the core refuses smaller images (less than one latent token)
CATEGORY = "FireRed"


class FireRedNodeError(ValueError):
    """A node input cannot be used; the message says which input and what to do."""


def require_instruction(text: Any, name: str = "instruction") -> str:
    """``text`` stripped of surrounding whitespace; an empty or non-string value is refused."""
    if not isinstance(text, str) or not text.strip():
        raise FireRedNodeError(f"{name} is empty: describe the edit to make (e.g. 'make the sky purple')")
    return text.strip()


def require_image(image: Any, name: str = "image") -> "torch.Tensor":
    """``image`` checked as a ComfyUI IMAGE: a float tensor ``[B, H, W, C]``, C in {1, 3, 4}, finite values."""
    import torch

    if not isinstance(image, torch.Tensor):
        raise FireRedNodeError(f"{name}: expected an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4:
        raise FireRedNodeError(f"{name}: expected an IMAGE tensor of shape [B, H, W, C] (4 dimensions), got shape "
                               f"{tuple(image.shape)}")
    batch, height, width, channels = image.shape
    if channels not in (1, 3, 4):
        raise FireRedNodeError(f"{name}: an IMAGE needs 3 channels (RGB; 1 or 4 are converted), got {channels} in "
                               f"shape {tuple(image.shape)} - is it a MASK or a channels-first tensor?")
    if batch < 1:
        raise FireRedNodeError(f"{name}: the IMAGE batch is empty")
    if min(height, width) < MIN_SIDE:
        raise FireRedNodeError(f"{name}: {width}x{height} px is too small, each side needs at least {MIN_SIDE} px")
    if not image.is_floating_point():
        raise FireRedNodeError(f"{name}: an IMAGE holds floats in [0, 1], got dtype {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        raise FireRedNodeError(f"{name}: the IMAGE contains NaN or infinite values")
    return image


def tensor_to_pils(image: "torch.Tensor", name: str = "image") -> list["Image.Image"]:
    """A ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> B RGB PIL images (values clamped, rounded to 8 bits)."""
    import numpy as np
    import torch
    from PIL import Image

    image = require_image(image, name)
    # [B, H, W, C] float -> uint8 on the CPU; round half up like ComfyUI's own SaveImage (clip(255 * x))
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    out = []
    for item in pixels:
        if item.shape[-1] == 1:
            out.append(Image.fromarray(item[..., 0], mode="L").convert("RGB"))
        elif item.shape[-1] == 4:
            rgba = Image.fromarray(np.ascontiguousarray(item), mode="RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            out.append(Image.alpha_composite(white, rgba).convert("RGB"))
        else:
            out.append(Image.fromarray(np.ascontiguousarray(item), mode="RGB"))
    return out


def pils_to_tensor(images: Sequence["Image.Image"]) -> "torch.Tensor":
    """PIL images of one size -> a ComfyUI IMAGE ``[B, H, W, 3]`` float32 in [0, 1]."""
    import numpy as np
    import torch

    if not images:
        raise FireRedNodeError("no images to convert into an IMAGE batch")
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        raise FireRedNodeError(f"images of different sizes cannot form one IMAGE batch: {sorted(sizes)}")
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    return torch.from_numpy(np.stack(arrays))  # [B, H, W, 3]


@contextmanager
def node_errors(what: str) -> Iterator[None]:
    """Re-raise the core's input errors (ValueError, missing files, ...) as ``FireRedNodeError`` prefixed by ``what``.

    Errors that are not about the input (out of memory, interruption, bugs) pass through unchanged, so ComfyUI
    reports them as what they are.
    """
    try:
        yield
    except FireRedNodeError:
        raise
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        raise FireRedNodeError(f"{what}: {exc}") from exc

