"""Running edits for the nodes: the batch rule, seeds, ComfyUI progress and interruption, IMAGE/LATENT outputs.

Batch rule (what a ComfyUI user expects from a node with several IMAGE inputs): the connected image inputs are the
references, numbered in input order (``Picture 1`` is the first connected one). Each input holds 1 or B images;
the node makes B edits, edit ``i`` taking item ``i`` of every input with B images and the single image of every
input with 1 (broadcast). Any other mix of batch sizes is an error. Edit ``i`` uses seed ``seed + i`` (wrapping
at 2**64), so a batch of B equals B single runs with consecutive seeds. Without images the node makes one
text-to-image edit.

Outputs: IMAGE ``[B, H, W, 3]`` in [0, 1]; LATENT ``{"samples": [B, C, 1, H/8, W/8]}`` holding the VAE's raw
(not normalised) latents in ComfyUI's layout for this model family (its Wan-2.1 latent format is 5-D), so core
ComfyUI's VAE Decode with the same VAE turns them into the same picture (before ``keep_unedited``, which puts
Picture 1's own pixels back outside the edited area of the IMAGE output only).

Other node modules use ``EditSettings`` and ``run_edits`` to make N candidates of one edit (pass the same
references N times).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from . import comfy_bridge
from .common import FireRedNodeError, node_errors, pils_to_tensor, tensor_to_pils
from .model_handle import FireRedModel

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from firered_core.pipeline import EditResult, FireRedEditPipeline

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_SEED = 2**64 - 1
MAX_SIDE = 8192
MODEL_STEPS = 0  # the steps widget's "the model's own"
MODEL_CFG = -1.0  # the true_cfg_scale widget's "the model's own" (any negative value means it)
KEEP_UNEDITED = {"model default": None, "on": True, "off": False}  # widget choice -> edit(keep_unedited=...)
SAMPLERS = {"model default": None, "stochastic": "stochastic", "euler": "euler"}  # -> edit(sampler=...)
SIZE_MODES = {"model area": "area", "match Picture 1": "match"}  # widget choice -> edit(size_mode=...)
MODEL_AREA = 0  # the reference-area widgets' "the model's own"
MAX_AREA = MAX_SIDE * MAX_SIDE


@dataclass(frozen=True)
class EditSettings:
    """The sampling inputs every edit node shares, validated once."""

    negative_prompt: str | None
    steps: int | None  # None = the model's own (its defaults.json, else the released model's 40)
    true_cfg_scale: float | None  # None = the model's own (its defaults.json, else 4)
    seed: int
    width: int | None  # None = automatic (about 1 MP at the last reference's aspect)
    height: int | None
    keep_unedited: bool | None = None  # keep Picture 1 outside the edit: None = the model's own setting
    sampler: str | None = None  # "stochastic" (re-noise every step) or "euler": None = the model's own
    size_mode: str = "area"  # "match": Picture 1's own size, aligned with it (width and height must be automatic)
    vae_ref_area: int | None = None  # pixels references are VAE-encoded at: None = the model's own
    cond_ref_area: int | None = None  # pixels the condition encoder sees them at: None = the encoder's own

    @classmethod
    def from_inputs(cls, negative_prompt: Any, steps: Any, true_cfg_scale: Any, seed: Any, width: Any = 0,
                    height: Any = 0, keep_unedited: Any = "model default",
                    sampler: Any = "model default", size_mode: Any = "model area",
                    vae_ref_area: Any = MODEL_AREA, cond_ref_area: Any = MODEL_AREA) -> "EditSettings":
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise FireRedNodeError(f"negative_prompt must be text, got {type(negative_prompt).__name__}")
        steps = _integer(steps, "steps", MODEL_STEPS, 1000) or None  # MODEL_STEPS (0): the model's own
        if isinstance(true_cfg_scale, bool) or not isinstance(true_cfg_scale, (int, float)) \
                or not math.isfinite(true_cfg_scale) or true_cfg_scale < MODEL_CFG:
            raise FireRedNodeError(f"true_cfg_scale must be a finite number >= 0, or {MODEL_CFG:g} for the model's "
                                   f"own, got {true_cfg_scale!r}")
        cfg = None if true_cfg_scale < 0 else float(true_cfg_scale)
        seed = _integer(seed, "seed", 0, MAX_SEED)
        sides = [_integer(v, name, 0, MAX_SIDE) or None for v, name in ((width, "width"), (height, "height"))]
        # an empty negative prompt disables true CFG in the reference; " " is the released default
        negative = negative_prompt if negative_prompt else None
        mode = _choice(size_mode, "size_mode", SIZE_MODES)
        if mode == "match" and any(sides):
            raise FireRedNodeError("size_mode 'match Picture 1' takes the output size from Picture 1: set width and "
                                   "height to 0, or choose 'model area'")
        areas = [_area(v, name) for v, name in ((vae_ref_area, "vae_ref_area"), (cond_ref_area, "cond_ref_area"))]
        return cls(negative, steps, cfg, seed, sides[0], sides[1],
                   _choice(keep_unedited, "keep_unedited", KEEP_UNEDITED), _choice(sampler, "sampler", SAMPLERS),
                   mode, *areas)

    def edit_options(self) -> dict[str, Any]:
        """The keywords of ``FireRedEditPipeline.edit`` these settings give (seed aside: it varies per edit)."""
        return {"negative_prompt": self.negative_prompt, "steps": self.steps, "true_cfg_scale": self.true_cfg_scale,
                "width": self.width, "height": self.height, "keep_unedited": self.keep_unedited,
                "sampler": self.sampler, "size_mode": self.size_mode, "vae_ref_area": self.vae_ref_area,
                "cond_ref_area": self.cond_ref_area}


def _area(value: Any, name: str) -> int | None:
    """A reference-area widget: ``MODEL_AREA`` (0) = None, the model's own; else pixels (``sizing.check_area``)."""
    from firered_core.sizing import check_area

    area = _integer(value, name, MODEL_AREA, MAX_AREA)
    try:
        return check_area(name, area) if area != MODEL_AREA else None
    except ValueError as exc:
        raise FireRedNodeError(f"{exc} (0 = the model's own)") from None


def _choice(value: Any, name: str, choices: Mapping[str, T]) -> T:
    """What a combo widget's choice means, or a node error naming the choices."""
    if not isinstance(value, str) or value not in choices:
        raise FireRedNodeError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return choices[value]


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FireRedNodeError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def reference_batches(images: Sequence[tuple[str, "torch.Tensor | None"]]) -> list[list["Image.Image"]]:
    """Per edit, its reference images, from ``(input name, IMAGE or None)`` pairs (see the batch rule above)."""
    connected = [(name, tensor_to_pils(image, name)) for name, image in images if image is not None]
    if not connected:
        return [[]]
    sizes = {name: len(pils) for name, pils in connected}
    batch = max(sizes.values())
    bad = [f"{name} has {n}" for name, n in sizes.items() if n not in (1, batch)]
    if bad:
        raise FireRedNodeError(f"image batches must have the same size or 1 (broadcast); the largest is {batch} but "
                               + ", ".join(bad))
    return [[pils[i if len(pils) > 1 else 0] for _, pils in connected] for i in range(batch)]


def run_edits(model: FireRedModel, batches: Sequence[Sequence["Image.Image"]], instruction: str,
              settings: EditSettings, what: str = "FireRed Edit") -> list["EditResult"]:
    """One edit per entry of ``batches`` (edit ``i`` with seed ``settings.seed + i``), with ComfyUI's progress bar
    across all of them, its interrupt button polled between steps and, when ComfyUI's previews are on, a preview
    of each step's clean-latent estimate on the node (``live_previews``)."""
    if not isinstance(model, FireRedModel):
        raise FireRedNodeError(f"model: expected a FIRERED_MODEL from FireRed Model Loader, got "
                               f"{type(model).__name__}")
    with node_errors(what):  # a size the model cannot make is refused before the model is moved or run
        for refs in batches:
            model.loaded.pipeline.output_size(list(refs), settings.width, settings.height, settings.size_mode)
        model.loaded.pipeline.condition_options(settings.cond_ref_area)  # an encoder that cannot take it
        pipeline = model.prepare()
    steps, _ = pipeline.sampling_choice(settings.steps, settings.true_cfg_scale)
    preview_size = comfy_bridge.sampling_preview_size()
    update = comfy_bridge.progress_with_preview(steps * len(batches), preview_size or comfy_bridge.PREVIEW_SIZE)
    project = live_previews(pipeline) if preview_size is not None and update is not None else None
    cancel = comfy_bridge.cancel_hook()
    results = []
    for i, refs in enumerate(batches):
        offset = i * steps
        shown: list["Image.Image"] = []  # the step's preview, made by the preview hook just before its progress

        def progress(step: int, _total: int, _state: object, offset: int = offset,
                     shown: list["Image.Image"] = shown) -> None:
            if update is not None:
                update(offset + step, shown.pop() if shown else None)

        def preview(_step: int, _total: int, latents: "torch.Tensor", shown: list["Image.Image"] = shown) -> None:
            shown[:] = [project(latents)]  # type: ignore[misc]

        with node_errors(what):
            results.append(pipeline.edit(list(refs), instruction, seed=(settings.seed + i) % 2**64,
                                         progress=progress, cancel=cancel,
                                         preview=preview if project is not None else None,
                                         **settings.edit_options()))
    return results


def live_previews(pipeline: "FireRedEditPipeline") -> Callable[["torch.Tensor"], "Image.Image"]:
    """Latents ``[1, C, h, w]`` -> an ``h x w`` preview picture, by the pipeline's latent -> RGB projection (its
    folder's fitted table, else one fitted once from its VAE); ComfyUI scales it to its preview size."""
    return pipeline.preview_projection().image


def to_outputs(results: Sequence["EditResult"], pipeline: "FireRedEditPipeline") -> tuple["torch.Tensor", dict]:
    """(IMAGE ``[B, H, W, 3]``, LATENT ``{"samples": [B, C, 1, h, w]}`` with raw VAE latents)."""
    import torch

    image = pils_to_tensor([r.image for r in results])
    normalised = torch.cat([r.latents.float() for r in results])  # [B, C, h, w]
    raw = pipeline.vae.denormalize(normalised)  # per-channel stats only: fine on the CPU
    return image, {"samples": raw.cpu()[:, :, None]}  # [B, C, h, w] -> [B, C, 1, h, w]

