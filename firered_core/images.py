"""Image files in and out: validation, conversion to RGB, the sizing rule, and pixel-exact tensor conversion.

Loading (``load_image``) accepts what a user is likely to hand over and refuses only what cannot work:

- refused, with a message naming the file: a missing path, a directory, an empty (0-byte) file, a file that is not
  an image or does not decode, an image with a side shorter than ``MIN_SIDE`` (16 px) and an image over
  ``MAX_PIXELS`` (64 MiP, e.g. 8192 x 8192). The pixel limit is checked from the header, before the pixels are
  decoded, so a decompression bomb costs nothing; Pillow's own bomb error is reported the same way.
- converted: 16-bit grayscale (I;16, or I as some decoders give it: scaled from 0..65535 to 8 bits, not
  clipped), float grayscale (taken as [0, 1] when its maximum is <= 1, else as 0..255), 8-bit grayscale,
  palette, bilevel, CMYK and YCbCr images become RGB. Images with transparency (RGBA, LA, PA, palette with a
  transparent colour) are composited over **white**: that is how a viewer or browser shows a transparent PNG,
  whereas dropping the alpha channel exposes whatever colour the transparent pixels happen to store (often
  black). EXIF orientation is applied, so phone photos come out upright; an animated file gives its
  first frame.

Sizing (``calculate_dimensions``, from ``sizing.py``) is the reference's rule: a target pixel area at a given
aspect, each side rounded to a multiple of 32.

Tensors: ``to_tensor`` resizes with Lanczos and maps bytes to [-1, 1] with the same float32 operations as
diffusers' ``VaeImageProcessor.preprocess``; ``to_pil`` maps [-1, 1] back with ``VaeImageProcessor.postprocess``'s
clamp and round-half-to-even, so pixels match the reference bit for bit. ``save_image`` writes atomically and
never replaces an existing file unless asked to.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .sizing import SIZE_MULTIPLE, ImageError, calculate_dimensions  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # torch is imported where tensors are made, so checking files stays cheap
    import torch

log = logging.getLogger(__name__)

MIN_SIDE = 16  # px; smaller than one 16x16 latent token is certainly a mistake (a 1x1 tracking pixel, an icon)
MAX_PIXELS = 64 * 1024 * 1024  # 64 MiP: 4x the largest photos a phone takes, far below what would exhaust RAM

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` and return an RGB image, or raise ``ImageError``/``FileNotFoundError`` naming the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file {str(p)!r} does not exist")
    if p.is_dir():
        raise ImageError(f"image {str(p)!r} is a directory, not an image file")
    if p.stat().st_size == 0:
        raise ImageError(f"image file {str(p)!r} is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (and only later errors) on very large images; we want one clear refusal instead
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(p) as img:
                _check_size(img.size, str(p))
                img.load()
                return ensure_rgb(img, name=str(p))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"image {str(p)!r} is too large: more than {MAX_PIXELS:,} pixels") from None
        except UnidentifiedImageError:
            raise ImageError(f"file {str(p)!r} is not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"image {str(p)!r} could not be decoded (truncated or corrupt?): {exc}") from None


def ensure_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """``img`` as an RGB image following the conversion rules above; ``name`` labels errors."""
    _check_size(img.size, name)
    if getattr(img, "n_frames", 1) > 1:
        log.info("%s has %d frames; using the first", name, img.n_frames)
        img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        return Image.fromarray(_wide_gray_to_uint8(img)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert image mode {img.mode!r} to RGB: {exc}") from None


def _wide_gray_to_uint8(img: Image.Image) -> np.ndarray:
    """16/32-bit integer or float grayscale -> uint8, scaled rather than clipped at 255."""
    arr = np.asarray(img)
    if img.mode == "F":
        # float images have no fixed range; [0, 1] is the common convention, anything larger is taken as 0-255
        arr = arr.astype(np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    # 16-bit PNG/TIFF decode to I;16 (or I on older Pillow): full range is 0..65535
    return np.clip(arr.astype(np.float64) * (255.0 / 65535.0), 0, 255).round().astype(np.uint8)


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(f"image {name!r} is too large: {width}x{height} = {width * height:,} pixels, "
                         f"the limit is {MAX_PIXELS:,}")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image {name!r} is too small: {width}x{height}, each side needs at least {MIN_SIDE} px")


def to_tensor(img: Image.Image, width: int, height: int) -> torch.Tensor:
    """RGB ``img`` resized to ``width`` x ``height`` (Lanczos) -> float32 ``[1, 3, height, width]`` in [-1, 1]."""
    if img.mode != "RGB":
        raise ImageError(f"to_tensor expects an RGB image, got mode {img.mode!r}; use ensure_rgb first")
    if width <= 0 or height <= 0:
        raise ImageError(f"to_tensor: width and height must be positive, got {width}x{height}")
    import torch

    resized = img.resize((width, height), resample=Image.Resampling.LANCZOS)
    # float32 division then 2x-1, the order the reference uses, so every value is bit-identical
    unit = np.asarray(resized).astype(np.float32) / 255.0
    tensor = torch.from_numpy(unit[None].transpose(0, 3, 1, 2).copy())  # [1, H, W, 3] -> [1, 3, H, W]
    return 2.0 * tensor - 1.0


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> float32 ``[B, H, W, 3]`` in [0, 1] (the layout ComfyUI uses)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    # clamp in the tensor's own dtype before widening, as the reference does
    unit = (images * 0.5 + 0.5).clamp(0, 1)
    return unit.detach().cpu().permute(0, 2, 3, 1).float()


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image ``[1, 3, H, W]`` or ``[3, H, W]`` in [-1, 1] -> RGB PIL image, rounded like the reference."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ImageError(f"to_pil converts one image of shape [1, 3, H, W], got {tuple(image.shape)}")
    unit = to_unit_range(image)[0].numpy()
    return Image.fromarray((unit * 255).round().astype(np.uint8))


def save_image(img: Image.Image, path: str | os.PathLike[str], *, overwrite: bool = False,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``img`` to ``path`` atomically (temp file + rename); the format follows the file extension.

    An existing file is left untouched unless ``overwrite`` is set. ``metadata`` becomes PNG text chunks. The file's
    mode follows the umask, as any file the user creates.
    """
    out = Path(path)
    check_output_path(out, overwrite=overwrite)
    fmt = Image.registered_extensions()[out.suffix.lower()]
    options: dict[str, object] = {}
    if fmt == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value)
        options["pnginfo"] = info
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the image gets the mode of any file the user creates
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format=fmt, **options)
        if not overwrite and out.exists():  # it may have appeared while we were encoding
            raise FileExistsError(f"output file {str(out)!r} already exists (pass overwrite to replace it)")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Raise if ``path`` cannot receive an image: existing (without ``overwrite``), no folder or one that is not
    writable, unknown extension."""
    out = Path(path)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ImageError(f"output file {str(out)!r}: unknown image extension {out.suffix!r} (use .png)")
    if out.is_dir():
        raise ImageError(f"output path {str(out)!r} is a directory")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output file {str(out)!r} already exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(out.parent)!r} does not exist")
    try:  # os.access says yes to root even on a read-only mount: a real file is the only honest probe
        with tempfile.NamedTemporaryFile(prefix=f".{out.name}.", suffix=".probe", dir=out.parent):
            pass
    except OSError as exc:
        raise PermissionError(f"output folder {str(out.parent)!r} is not writable ({exc.strerror})") from None
    return out


def side_by_side(images: Sequence[Image.Image], *, height: int = 256, gap: int = 8) -> Image.Image:
    """The images in a row on white, each scaled to ``height`` pixels (nearest neighbour, so small images stay
    crisp): the before/after comparison of an edit."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    tiles = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST)
             for im in images]
    row = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) + 1), height + 2 * gap), "white")
    x = gap
    for t in tiles:
        row.paste(t, (x, gap))
        x += t.width + gap
    return row
