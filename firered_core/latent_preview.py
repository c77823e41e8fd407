"""Cheap previews of latents: a linear map from a latent pixel's channels to an RGB colour, fitted by least squares.

A VAE's latent pixel stands for a ``compression x compression`` patch of the image, and its channels carry that
patch's mean colour almost linearly. ``LatentPreview`` holds the map, ``rgb = latents . factors + bias``
(``factors`` ``[C, 3]``, ``bias`` ``[3]``), and turns normalised latents ``[B, C, h, w]`` into a small RGB picture
at the latent resolution: one matrix product per step, which is what a sampler can afford to show while it runs.
The map is the same kind of table ComfyUI keeps per latent format (``latent_rgb_factors`` and its bias, applied to
the latents the sampler sees), but every table here is fitted by the project:

* ``fit_latent_preview(latents, images)``: least squares from the latents to the decoded images averaged down to
  the latent grid (``downsample``), with a constant column for the bias; it records its root-mean-square error
  in image units ([-1, 1]) and what it was fitted on;
* ``random_decodes(vae, ...)``: seeded normal latents (normalised latents are about unit normal) and their decodes,
  a fit set any VAE can make for itself (``fit_from_vae``) when no fitted table ships with a model.

A model folder keeps its table in ``vae/latent_preview.json`` (``PREVIEW_FILE``, beside the VAE's
``config.json``); ``read_latent_preview`` loads it (None for a folder without one or for single files), and
``LatentPreview.save`` writes it atomically. ``scripts/fit_latent_preview.py`` fits a folder's table on images
the model generates.

Public API: ``PREVIEW_FILE``, ``LatentPreview``, ``downsample``, ``fit_latent_preview``, ``random_decodes``,
``fit_from_vae``, ``read_latent_preview``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["PREVIEW_FILE", "LatentPreview", "downsample", "fit_latent_preview", "random_decodes", "fit_from_vae",
           "read_latent_preview"]

PREVIEW_FILE = "latent_preview.json"  # in a model folder's vae/ subfolder
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LatentPreview:
    """A fitted latent -> RGB map. ``factors[c]`` is channel ``c``'s (r, g, b) weight; colours are in [-1, 1].

    ``rmse``: the fit's root-mean-square error in [-1, 1] image units on its own data (None if unknown);
    ``fitted_on``: a short description of that data.
    """

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]
    rmse: float | None = None
    fitted_on: str = ""

    def __post_init__(self) -> None:
        if not self.factors or any(len(row) != 3 for row in self.factors):
            raise ValueError(f"LatentPreview: factors must be one (r, g, b) row per latent channel, got "
                             f"{[len(row) for row in self.factors]} entries per row")
        if len(self.bias) != 3:
            raise ValueError(f"LatentPreview: bias must be (r, g, b), got {len(self.bias)} values")
        values = [v for row in self.factors for v in row] + list(self.bias)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError("LatentPreview: factors and bias must be finite numbers")

    @property
    def channels(self) -> int:
        return len(self.factors)

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, C, h, w]`` -> RGB ``[B, 3, h, w]`` in about [-1, 1] (float32, not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"LatentPreview: expected latents [B, {self.channels}, h, w], got {tuple(latents.shape)}")
        weight = torch.tensor(self.factors, dtype=torch.float32, device=latents.device)  # [C, 3]
        bias = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        rgb = torch.einsum("bchw,cd->bdhw", latents.to(torch.float32), weight)
        return rgb + bias[None, :, None, None]

    def image(self, latents: torch.Tensor) -> "Image.Image":
        """The first item of ``latents`` ``[B, C, h, w]`` as an ``h x w`` RGB picture (clamped, 8-bit)."""
        from PIL import Image

        rgb = self.apply(latents[:1])[0].clamp(-1.0, 1.0)
        pixels = ((rgb + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(pixels, mode="RGB")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "factors": [[round(v, 6) for v in row] for row in self.factors],
                "bias": [round(v, 6) for v in self.bias], "rmse": None if self.rmse is None else round(self.rmse, 6),
                "fitted_on": self.fitted_on}

    def to_json(self) -> str:
        """The text of a ``latent_preview.json``: one line per channel's (r, g, b) row."""
        data = self.to_dict()
        rows = ",\n".join(f"    {json.dumps(row)}" for row in data.pop("factors"))
        head = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
        return f"{{\n{head},\n  \"factors\": [\n{rows}\n  ]\n}}\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = PREVIEW_FILE) -> "LatentPreview":
        """The table of a parsed ``latent_preview.json``; errors name ``source`` and what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"{source}: format must be {FORMAT_VERSION}, got {data.get('format')!r}")
        factors, bias, rmse = data.get("factors"), data.get("bias"), data.get("rmse")
        if not isinstance(factors, list) or not all(isinstance(row, list) for row in factors):
            raise ValueError(f"{source}: 'factors' must be a list of [r, g, b] rows, got {factors!r:.80}")
        if not isinstance(bias, list):
            raise ValueError(f"{source}: 'bias' must be a list [r, g, b], got {bias!r:.80}")
        if rmse is not None and (isinstance(rmse, bool) or not isinstance(rmse, (int, float))):
            raise ValueError(f"{source}: 'rmse' must be a number or null, got {rmse!r:.80}")
        try:
            return cls(tuple(tuple(row) for row in factors), tuple(bias), None if rmse is None else float(rmse),
                       str(data.get("fitted_on", "")))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path`` as JSON, atomically (temporary file, then rename); returns the path."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatentPreview":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` averaged over each latent pixel's footprint to ``size`` = (h, w); H and W must be
    whole multiples of h and w."""
    h, w = size
    if images.ndim != 4 or images.shape[-2] % h or images.shape[-1] % w:
        raise ValueError(f"downsample: images {tuple(images.shape)} are not whole multiples of the latent grid {h}x{w}")
    return F.avg_pool2d(images.to(torch.float32), (images.shape[-2] // h, images.shape[-1] // w))


def fit_latent_preview(latents: torch.Tensor, images: torch.Tensor, fitted_on: str = "") -> LatentPreview:
    """Least squares from normalised latents ``[N, C, h, w]`` to their decoded ``images`` ``[N, 3, H, W]`` in
    [-1, 1] (averaged down to the latent grid), with a bias; returns the table with its RMSE on this data."""
    if latents.ndim != 4 or images.ndim != 4 or latents.shape[0] != images.shape[0] or images.shape[1] != 3:
        raise ValueError(f"fit_latent_preview: expected latents [N, C, h, w] and images [N, 3, H, W] with the same N, "
                         f"got {tuple(latents.shape)} and {tuple(images.shape)}")
    channels = latents.shape[1]
    target = downsample(images, latents.shape[-2:]).permute(0, 2, 3, 1).reshape(-1, 3).double()
    x = latents.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, channels)
    if x.shape[0] < channels + 1:
        raise ValueError(f"fit_latent_preview: {x.shape[0]} latent pixels cannot determine {channels + 1} unknowns "
                         "per colour; give more or larger latents")
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, target).solution  # [C + 1, 3]
    rmse = float((design @ solution - target).pow(2).mean().sqrt())
    factors = tuple(tuple(float(v) for v in row) for row in solution[:channels].tolist())
    bias = tuple(float(v) for v in solution[channels].tolist())
    log.info("latent preview fitted on %d latent pixels (%s): RMSE %.4f", x.shape[0], fitted_on or "-", rmse)
    return LatentPreview(factors, bias, rmse, fitted_on)  # type: ignore[arg-type]


def random_decodes(vae: Any, count: int = 4, size: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded unit-normal normalised latents ``[count, C, size, size]`` (the spread sampled latents have)
    and their decodes by ``vae`` computed on ``device`` in ``dtype``; both returned float32 on the CPU."""
    if count < 1 or size < 1:
        raise ValueError(f"random_decodes: count and size must be >= 1, got {count} and {size}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    latents = torch.randn((count, int(vae.z_dim), size, size), generator=generator)
    with torch.inference_mode():
        images = vae.decode(latents.to(device, dtype))
    return latents, images.to("cpu", torch.float32)


def fit_from_vae(vae: Any, count: int = 4, size: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> LatentPreview:
    """A table fitted on ``random_decodes``: for VAEs whose folder ships none (a few small decodes, once)."""
    latents, images = random_decodes(vae, count, size, seed, device, dtype)
    return fit_latent_preview(latents, images, f"{count} decoded random {size}x{size} latents, seed {seed}")


def read_latent_preview(source: object) -> LatentPreview | None:
    """The ``vae/latent_preview.json`` of model folder ``source``; None for single files or a folder without one."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        path = Path(source) / "vae" / PREVIEW_FILE
        if path.is_file():
            return LatentPreview.load(path)
    return None
