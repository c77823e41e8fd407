"""``FireRedEditPipeline``: edit (or generate) one image from 0..N reference images and an instruction.

This is diffusers' ``QwenImageEditPlusPipeline.__call__`` reproduced step by step on the core's own components, so
the same weights, inputs and seed give the same latents and the same pixels (the parity test checks it):

1. **Output size** (``sizing.py``). ``width``/``height`` when given (multiples of the token size, ``VAE
   compression x patch``: 16 for the released model; other sides are refused naming the nearest), otherwise about
   ``output_area`` (1024^2) pixels at the aspect of the LAST reference image (square without references), each
   side a multiple of 32 floored to the token size; with one side given the other follows that aspect.
   ``size_mode="match"`` (not in the reference) instead makes Picture 1's own size: each side padded up to the
   token size by edge replication (less than one token), the padding cropped off the decoded result, so the
   output has Picture 1's exact pixel size and grid and is not shifted or zoomed against it.
2. **References, twice.** Every reference goes to the condition encoder together with the instruction (the
   encoder resizes it to ~384^2 for the VLM; ``cond_ref_area`` changes that area for encoders that read images),
   and is also resized to about ``reference_area`` (1024^2; per call ``vae_ref_area``) pixels at its own aspect,
   VAE-encoded (posterior mode, normalised) and packed into tokens appended after the target's. In size mode
   ``"match"`` Picture 1 is encoded at exactly the output's padded canvas instead, so its tokens line up with the
   target's one to one.
3. **Condition.** The instruction and, for true CFG, the negative prompt are encoded separately with the same
   images. True CFG runs only when ``true_cfg_scale > 1`` and ``negative_prompt`` is not ``None``.
4. **Sampling.** Seeded noise (``sampler.initial_noise``), sigmas from ``schedule.flow_sigmas`` with the shift
   taken from the number of TARGET tokens, then Euler steps (``sampler.euler_sample``) with per-step progress
   and cancel hooks. ``img_shapes`` lists the target first, then each reference. The ``"stochastic"`` sampler
   (the default when the scheduler config has diffusers' ``stochastic_sampling``) re-noises each step with noise
   from the same seeded generator as the start.
5. **Decode** with the VAE and round to 8-bit exactly like the reference (``images.to_pil``).
6. **Optionally keep the unedited area** (``keep_unedited``, not in the reference, off by default): Picture 1's
   own pixels wherever the result's latents match Picture 1's (``preserve.py``), so a local edit leaves the rest of
   the image exactly as it was instead of sending it through the VAE.

Live previews: ``edit(preview=fn)`` hands ``fn`` the sampler's clean-latent estimate after every step (``x0``,
unpacked to ``[1, C, h, w]``, normalised); without ``preview`` none is computed. ``preview_projection()`` is the
cheap latent -> RGB map to draw it with (``latent_preview.py``): the folder's fitted ``vae/latent_preview.json``,
else one fitted once on a few decoded random latents of this VAE.

Model folder settings: ``from_pretrained`` applies a folder's ``defaults.json`` (``loading.model_defaults``: the
trained area, steps, true CFG, ``keep_unedited``), as diffusers applies a folder's scheduler config.

Where it computes: ``placement`` (``firered_core.offload``) names the compute device and wraps each phase -
condition encoding (the encoder's network), reference encoding, sampling and decoding - in ``placement.use(part,
module)``, so a component may live on the CPU and visit the device only while it runs. The default,
``ResidentPlacement``, computes where the transformer's weights are and moves nothing; ``set_offload`` (or
``from_pretrained(..., offload=...)``) switches to offload ``none`` / ``model`` / ``blocks`` under a ``max_vram``
budget (docs/MEMORY.md). Every tensor passed between phases lives on ``placement.device``.

Choices where the reference gives no rule:

- An empty or whitespace-only instruction is refused (``ValueError``): the model would edit at random.
- References: the model was trained with 1-3. More are accepted (each adds its tokens to every attention call,
  so cost grows quickly) but a warning says results are outside what the model has seen; the soft limit is
  ``max_references`` (default 3).
- No references (text-to-image): the encoder's text-only template is used and the output defaults to
  ``output_area`` square, as diffusers' ``QwenImagePipeline`` does at 1024x1024; as there, the text condition is
  cut to ``max_text_tokens`` (512).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from PIL import Image

from .config import SchedulerConfig
from .latent_preview import LatentPreview, fit_from_vae, read_latent_preview
from .images import calculate_dimensions, ensure_rgb, load_image, to_pil, to_tensor
from .latents import pack_latents, unpack_latents
from .offload import Placement, check_max_vram, check_mode
from .pipeline_placement import PlacedPipeline
from .placement import compute_dtype
from . import preserve
from .preserve import PreserveConfig
from .progress import CancelFn, PreviewFn, ProgressFn, check_cancel
from .sampler import SAMPLERS, VelocityFn, euler_sample, initial_noise
from .schedule import flow_sigmas
from .sizing import check_area, check_size_mode, fit_side, match_canvas, output_size

if TYPE_CHECKING:
    from .loading.model_defaults import ModelDefaults
    from .lora import LoRAReport

log = logging.getLogger(__name__)
USEFUL_STEPS_FACTOR = 4  # more steps than this times the model's default refine nothing visible: warned about

__all__ = ["EditResult", "FireRedEditPipeline", "ImageInput"]

ImageInput = Image.Image | str | os.PathLike[str]


@dataclass(frozen=True)
class EditResult:
    """One generated image and how it was made.

    ``latents`` are the final normalised latents ``[1, C, height/8, width/8]`` (before decoding), on the CPU.
    ``keep_unedited``: Picture 1's pixels were kept outside the edited area (asked for, and a local edit).
    ``sampler``: what the steps were, ``"euler"`` or ``"stochastic"`` (re-noised every step).
    ``steps`` and ``true_cfg_scale``: what the sampler ran with (the pipeline's defaults when the call gave none).
    ``size_mode``: ``"area"`` or ``"match"``; in ``"match"`` ``width`` x ``height`` is Picture 1's own size and
    ``latents`` cover the padded canvas (sides rounded up to the token size), the image its top-left part.
    """

    image: Image.Image
    latents: torch.Tensor
    width: int
    height: int
    seed: int
    keep_unedited: bool = False
    sampler: str = "euler"
    steps: int = 0
    true_cfg_scale: float = 0.0
    size_mode: str = "area"


@dataclass(frozen=True)
class _Prepared:
    """Everything the sampling loop needs, computed once per call."""

    width: int
    height: int
    ref_tokens: torch.Tensor | None  # [1, N_refs_total, C*4] or None
    img_shapes: list[tuple[int, int, int]]
    first_ref: Image.Image | None = None  # Picture 1, for keep_unedited
    first_ref_latents: torch.Tensor | None = None  # its latents as encoded for the sequence (reused when sizes match)
    first_ref_canvas: torch.Tensor | None = None  # size mode "match": Picture 1 padded to the canvas, [-1, 1]
    crop: tuple[int, int] | None = None  # size mode "match": (width, height) of Picture 1, cut from the canvas


class FireRedEditPipeline(PlacedPipeline):
    """The edit pipeline over a transformer, a VAE, a condition encoder and a scheduler config."""

    output_area: int = 1024 * 1024  # default output size when width/height are not given
    reference_area: int = 1024 * 1024  # pixels each reference is resized to before VAE encoding
    max_references: int = 3  # soft limit: more are allowed with a warning
    max_text_tokens: int = 512  # text-to-image only: the reference keeps this many condition tokens
    keep_unedited: PreserveConfig | None = None  # keep Picture 1's pixels outside the edit (off: the reference)
    # what edit() samples with when a call gives no steps / true_cfg_scale: the released model's settings, or what
    # a model folder's defaults.json says it was tuned for (apply_defaults)
    default_steps: int = 40
    default_true_cfg_scale: float = 4.0
    # VAE tile side in latent pixels for reference encoding and decoding; None: the VAE's own rule (tiles only
    # above its max_untiled_pixels). Tiles bound the VAE's activation memory, see FireRedVAE.
    vae_tile: int | None = None
    # latent -> RGB map for live previews: a folder's fitted table, else fitted on first use (preview_projection)
    latent_preview: LatentPreview | None = None

    def __init__(self, transformer: Any, vae: Any, encoder: Any, scheduler_config: SchedulerConfig) -> None:
        if not isinstance(scheduler_config, SchedulerConfig):
            raise TypeError(f"scheduler_config must be a SchedulerConfig, got {type(scheduler_config).__name__}")
        self.transformer = transformer
        self.vae = vae
        self.encoder = encoder
        self.scheduler_config = scheduler_config
        # where computation happens and how components get there; resident: where the transformer's weights are
        self.placement: Placement = self._resident()

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                        dtype: torch.dtype = torch.float32, fp8: bool = False,
                        device: str | torch.device | None = None, fp8_encoder: bool | None = None,
                        offload: str | None = None, max_vram: int | None = None) -> "FireRedEditPipeline":
        """Load every component from a diffusers-format folder or ComfyUI single files (``loading``).

        ``fp8`` stores the transformer's linear weights in float8 (computed in ``dtype``); ``fp8_encoder`` the
        condition encoder's (None: as its file is, fp8 for fp8 files). Without ``offload``, ``device`` is where the
        weights go (default CPU) and computation follows them. With ``offload`` ("none", "model" or "blocks", see
        ``set_offload``) ``device`` is the compute device, the weights are loaded on the CPU (on the device for
        "none"; for "blocks" the transformer blocks stay file-backed where the file holds their storage dtype, so
        host memory need not hold them either) and ``max_vram`` bytes bound what sits on the device. A folder's
        ``defaults.json`` is applied (``apply_defaults``), and its ``vae/latent_preview.json`` becomes
        ``latent_preview``.
        """
        from .loading import load_components, read_model_defaults

        if offload is None:
            if max_vram is not None:
                raise ValueError("max_vram needs an offload mode: pass offload='none', 'model' or 'blocks'")
            load_device = device
        else:
            check_mode(offload)
            check_max_vram(max_vram)
            load_device = "cpu" if offload != "none" else device
        transformer, vae, encoder, scheduler_config = load_components(path_or_files, dtype=dtype, fp8=fp8,
                                                                      device=load_device, fp8_encoder=fp8_encoder,
                                                                      map_blocks=offload == "blocks")
        pipe = cls(transformer, vae, encoder, scheduler_config).apply_defaults(read_model_defaults(path_or_files))
        pipe.latent_preview = read_latent_preview(path_or_files)
        return pipe if offload is None else pipe.set_offload(offload, device=device, max_vram=max_vram)

    def apply_defaults(self, defaults: "ModelDefaults") -> "FireRedEditPipeline":
        """Take the settings a model folder was tuned for: its area for outputs and references (so inputs of any
        size are resized to it), its steps and true CFG for calls that give none, ``keep_unedited``. Settings it
        leaves unset stay as they are. Returns the pipeline."""
        if defaults.area:
            self.output_area = self.reference_area = defaults.area
        if defaults.steps is not None:
            self.default_steps = defaults.steps
        if defaults.true_cfg_scale is not None:
            self.default_true_cfg_scale = defaults.true_cfg_scale
        if defaults.keep_unedited is not None:
            self.keep_unedited = defaults.keep_unedited
        return self

    def load_lora(self, path: str | os.PathLike[str], strength: float = 1.0) -> "LoRAReport":
        """Apply the LoRA at ``path`` to the transformer (unmerged, scaled by ``strength``); returns its report."""
        from .lora import apply_lora

        report = apply_lora(self.transformer, path, strength)
        if report.unmatched:
            log.warning("LoRA %s: %d keys matched no layer of the transformer, e.g. %s",
                        path, len(report.unmatched), ", ".join(report.unmatched[:3]))
        log.info("LoRA %s: %d layers at strength %s", path, report.applied, strength)
        return report

    def preview_projection(self) -> LatentPreview:
        """The latent -> RGB map for previews of this pipeline's latents: ``latent_preview`` when it fits the VAE's
        channels, else one fitted now on four decoded random 16x16 latents (``latent_preview.fit_from_vae``) and
        kept as ``latent_preview``."""
        table = self.latent_preview
        channels = int(self.vae.z_dim)
        if table is not None and table.channels == channels:
            return table
        if table is not None:
            log.warning("latent preview table has %d channels, the VAE %d: fitting a new one", table.channels,
                        channels)
        with torch.inference_mode(), self._use("vae"):
            table = fit_from_vae(self.vae, device=self.device, dtype=self._vae_dtype())
        log.info("latent preview fitted on this VAE's decodes of random latents (RMSE %.3f)", table.rmse)
        self.latent_preview = table
        return table

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the latents: that of the condition the transformer consumes."""
        compute = getattr(self.transformer, "compute_dtype", None)
        if isinstance(compute, torch.dtype):
            return compute
        for p in self.transformer.parameters():
            if p.is_floating_point() and p.dtype.itemsize > 1:
                return p.dtype
        return torch.float32

    @property
    def compression(self) -> int:
        """Image pixels per latent pixel along a side (8 for the released VAE)."""
        return int(self.vae.spatial_compression)

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    # -- the call -----------------------------------------------------------------------------------------------

    def edit(self, images: Sequence[ImageInput], instruction: str, *, seed: int = 0, **options: Any) -> EditResult:
        """Edit ``images`` (0 = text-to-image) following ``instruction``, starting from ``seed``'s noise: one
        result of ``edit_seeds`` (every keyword of it but ``seeds``)."""
        return self.edit_seeds(images, instruction, seeds=(seed,), **options)[0]

    def edit_seeds(self, images: Sequence[ImageInput], instruction: str, *, seeds: Sequence[int],
                   negative_prompt: str | None = " ", steps: int | None = None, true_cfg_scale: float | None = None,
                   width: int | None = None, height: int | None = None, progress: ProgressFn | None = None,
                   cancel: CancelFn | None = None, keep_unedited: bool | PreserveConfig | None = None,
                   sampler: str | None = None, preview: PreviewFn | None = None, size_mode: str = "area",
                   vae_ref_area: int | None = None, cond_ref_area: int | None = None) -> list[EditResult]:
        """One edit of ``images`` (0 = text-to-image) following ``instruction`` per seed of ``seeds``, sampled
        together in one batch: the references and the instruction are encoded once, and result ``i`` is the one
        ``edit(seed=seeds[i])`` gives (its own starting noise and, stochastic, its own step noise; equal up to the
        rounding of batched arithmetic). See the module docstring for the steps.

        ``keep_unedited``: None uses the pipeline's ``keep_unedited`` setting (off unless a model folder's
        ``defaults.json`` turned it on), True its settings or the defaults of ``PreserveConfig``, False turns it
        off, a ``PreserveConfig`` is used as given. ``sampler``: ``"euler"`` (deterministic steps) or
        ``"stochastic"`` (re-noise every step) for this call; None: the scheduler config's. ``steps`` and
        ``true_cfg_scale``: None uses ``default_steps`` / ``default_true_cfg_scale`` (``sampling_choice``).
        ``preview``: called after every step with the predicted clean latents ``[1, C, h, w]`` of the first seed
        (normalised, on the compute device), e.g. for ``preview_projection().image``; None computes nothing for it.
        ``size_mode``: ``"area"`` (the reference's rule) or ``"match"`` (Picture 1's own size, aligned with it; no
        ``width``/``height`` then). ``vae_ref_area`` / ``cond_ref_area``: pixels each reference is resized to for
        the VAE / for the condition encoder (None: ``reference_area`` / the encoder's own, ~384^2 for Qwen2.5-VL;
        encoders that do not read images ignore it). All of it is checked before any torch work."""
        steps, true_cfg_scale = self.sampling_choice(steps, true_cfg_scale)
        if isinstance(seeds, (int, str, bytes)) or not len(seeds):
            raise ValueError(f"seeds must be a non-empty sequence of integers, got {seeds!r}")
        seeds = tuple(seeds)
        refs = self._check_inputs(images, instruction, steps, true_cfg_scale, seeds)
        check_size_mode(size_mode)
        vae_area = check_area("vae_ref_area", vae_ref_area) or self.reference_area
        encode_options = self.condition_options(check_area("cond_ref_area", cond_ref_area))
        self.output_size(refs, width, height, size_mode)
        keep = self.keep_unedited_config(keep_unedited)
        sampler = self.sampler_choice(sampler)
        if self.encoder is None:
            raise ValueError("the pipeline has no condition encoder: load a model folder with text_encoder/ or "
                             "pass the Qwen2.5-VL text-encoder file together with the transformer and VAE")
        guided = true_cfg_scale > 1 and negative_prompt is not None
        if true_cfg_scale > 1 and negative_prompt is None:
            log.warning("true_cfg_scale=%s has no effect without a negative prompt", true_cfg_scale)
        with torch.inference_mode():
            prepared = self._prepare(refs, width, height, cancel, size_mode, vae_area)
            check_cancel(cancel, "edit before encoding the instruction")
            with self._use("encoder"):
                condition = self._encode(instruction, refs, encode_options)
                negative = self._encode(negative_prompt, refs, encode_options) if guided else None
            cond = self._predictor(condition, prepared)
            uncond = self._predictor(negative, prepared) if negative is not None else None
            batch = self._sample(prepared, cond, uncond, steps, true_cfg_scale, seeds, sampler, progress, cancel,
                                 preview)
            check_cancel(cancel, "edit before decoding")
            width, height = prepared.crop or (prepared.width, prepared.height)
            results = []
            with self._use("vae"):
                for seed, latents in zip(seeds, batch.split(1), strict=True):
                    pixels = self.vae.decode(latents.to(self._vae_dtype()), cancel=cancel, **self._tiling())
                    kept = False
                    if keep is not None and prepared.first_ref is not None:
                        pixels, kept = self._keep_unedited(pixels, latents, prepared, keep)
                    results.append(EditResult(image=to_pil(pixels[..., :height, :width]),
                                              latents=latents.detach().cpu(), width=width, height=height, seed=seed,
                                              keep_unedited=kept, sampler=sampler, steps=steps,
                                              true_cfg_scale=float(true_cfg_scale), size_mode=size_mode))
        return results

    def _sample(self, prepared: "_Prepared", cond: VelocityFn, uncond: VelocityFn | None, steps: int,
                true_cfg_scale: float, seeds: Sequence[int], sampler: str,
                progress: ProgressFn | None, cancel: CancelFn | None,
                preview: PreviewFn | None = None) -> torch.Tensor:
        """Each seed's noise -> sampled latents ``[len(seeds), C, h, w]`` on the compute device, the transformer
        placed. Seed ``i`` has its own CPU generator: its starting noise, then (stochastic) its steps' noise."""
        latent_shape = (1, self.transformer.config.latent_channels,
                        prepared.height // self.compression, prepared.width // self.compression)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        x = torch.cat([initial_noise(latent_shape, seed, dtype=self.dtype, device=self.device, patch=self.patch,
                                     generator=generator) for seed, generator in zip(seeds, generators)])
        sigmas = flow_sigmas(steps, x.shape[1], self.scheduler_config)
        denoised = None
        if preview is not None:
            def denoised(step: int, total: int, tokens: torch.Tensor) -> None:
                preview(step, total, unpack_latents(tokens[:1], prepared.height, prepared.width, self.compression,
                                                    self.patch))
        with self._use("transformer"):
            tokens = euler_sample(cond, x, sigmas, predict_negative=uncond, cfg_scale=true_cfg_scale,
                                  num_train_timesteps=self.scheduler_config.num_train_timesteps,
                                  progress=progress, cancel=cancel,
                                  step_noise=generators if sampler == "stochastic" else None,
                                  denoised=denoised)
        return unpack_latents(tokens, prepared.height, prepared.width, self.compression, self.patch)

    def _tiling(self) -> dict[str, int]:
        """The tiling keywords for the VAE's encode/decode when ``vae_tile`` is set (VAEs without tiling ignore
        them; the overlap is 8 latent pixels, at most half a tile); nothing otherwise, so any VAE object works."""
        if self.vae_tile is None:
            return {}
        return {"tile": self.vae_tile, "tile_overlap": min(8, self.vae_tile // 2)}

    def output_size(self, images: Sequence[Image.Image], width: int | None = None,
                    height: int | None = None, size_mode: str = "area") -> tuple[int, int]:
        """(width, height) the pipeline will produce for these references and requested sides (``sizing.py``):
        automatic sides follow the last reference's aspect (square without references); a requested side the
        model cannot make is a ``ValueError`` naming the nearest ones it can. Size mode ``"match"``: Picture 1's
        own size (refused without a reference, with a requested side, or over the model's side limit)."""
        if check_size_mode(size_mode) == "match":
            self._match_canvas(images, width, height)
            return images[0].width, images[0].height
        aspect = images[-1].width / images[-1].height if images else 1.0
        return output_size(self.compression * self.patch, self.output_area, aspect, width, height)

    def _match_canvas(self, images: Sequence[Image.Image], width: int | None,
                      height: int | None) -> tuple[int, int]:
        """The padded canvas of size mode ``"match"`` (``sizing.match_canvas``)."""
        if not images:
            raise ValueError("size_mode='match' follows Picture 1, but no reference image was given")
        return match_canvas(self.compression * self.patch, images[0].width, images[0].height, width, height)

    def condition_options(self, cond_ref_area: int | None) -> dict[str, int]:
        """The keywords ``encoder.encode`` gets: ``image_area`` when ``cond_ref_area`` is set (an encoder that
        cannot take it is refused here, before any work), nothing otherwise so any encoder works."""
        if cond_ref_area is None:
            return {}
        import inspect

        encode = getattr(self.encoder, "encode", None)
        if encode is None or "image_area" not in inspect.signature(encode).parameters:
            raise ValueError(f"cond_ref_area: the condition encoder {type(self.encoder).__name__} has no setting "
                             "for the area it reads images at; leave cond_ref_area unset")
        return {"image_area": cond_ref_area}

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """The size nearest at or below ``width`` x ``height`` that the model can make (``sizing.fit_side``)."""
        unit = self.compression * self.patch
        return fit_side(width, unit), fit_side(height, unit)

    def _check_inputs(self, images: Sequence[ImageInput], instruction: str, steps: int, true_cfg_scale: float,
                      seeds: Sequence[int]) -> list[Image.Image]:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction is empty: describe the edit to make (e.g. 'make the sky purple')")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if steps > self.useful_steps:
            log.warning("steps=%d is far above this model's useful range (1-%d, %dx its default of %d): sampling "
                        "takes about %dx as long as the default for no better result", steps, self.useful_steps,
                        USEFUL_STEPS_FACTOR, self.default_steps, steps // max(self.default_steps, 1))
        if not true_cfg_scale >= 0:
            raise ValueError(f"true_cfg_scale must be >= 0, got {true_cfg_scale!r}")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
                raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        refs = [self._as_rgb(img, i) for i, img in enumerate(images)]
        if len(refs) > self.max_references:
            log.warning("%d reference images given; the model was trained with 1-%d, results may degrade and "
                        "each extra image adds its tokens to every attention call", len(refs), self.max_references)
        return refs

    @staticmethod
    def _as_rgb(image: ImageInput, index: int) -> Image.Image:
        if isinstance(image, Image.Image):
            return ensure_rgb(image, name=f"reference image {index + 1}")
        if isinstance(image, (str, os.PathLike)):
            return load_image(Path(image))
        raise TypeError(f"reference image {index + 1}: expected a PIL image or a path, got {type(image).__name__}")

    def _prepare(self, refs: list[Image.Image], width: int | None, height: int | None,
                 cancel: CancelFn | None, size_mode: str = "area", vae_area: int | None = None) -> _Prepared:
        vae_area = vae_area or self.reference_area
        match = size_mode == "match"
        out_w, out_h = self._match_canvas(refs, width, height) if match else self.output_size(refs, width, height)
        unit = self.compression * self.patch
        shapes = [(1, out_h // unit, out_w // unit)]
        packed = []
        first_latents = first_canvas = None
        with self._use("vae") if refs else contextlib.nullcontext():
            for i, ref in enumerate(refs):
                check_cancel(cancel, f"edit before encoding reference image {i + 1}")
                if match and i == 0:  # Picture 1 unresized, edge-padded to the canvas (less than one token)
                    ref_w, ref_h = out_w, out_h
                    pixels = torch.nn.functional.pad(to_tensor(ref, ref.width, ref.height),
                                                     (0, out_w - ref.width, 0, out_h - ref.height), mode="replicate")
                    pixels = first_canvas = pixels.to(self.device, self._vae_dtype())
                else:
                    ref_w, ref_h = calculate_dimensions(vae_area, ref.width / ref.height)
                    pixels = to_tensor(ref, ref_w, ref_h).to(self.device, self._vae_dtype())
                latents = self.vae.encode(pixels, **self._tiling()).to(self.dtype)  # [1, C, h/8, w/8], normalised
                packed.append(pack_latents(latents, self.patch))
                shapes.append((1, ref_h // unit, ref_w // unit))
                if i == 0:
                    first_latents = latents
        ref_tokens = torch.cat(packed, dim=1) if packed else None
        log.info("output %dx%d%s, %d reference(s), token grids %s", out_w, out_h,
                 f" cropped to Picture 1's {refs[0].width}x{refs[0].height}" if match else "", len(refs), shapes)
        return _Prepared(width=out_w, height=out_h, ref_tokens=ref_tokens, img_shapes=shapes,
                         first_ref=refs[0] if refs else None, first_ref_latents=first_latents,
                         first_ref_canvas=first_canvas, crop=(refs[0].width, refs[0].height) if match else None)

    @property
    def useful_steps(self) -> int:
        """The most steps worth sampling: more are allowed, with a warning."""
        return USEFUL_STEPS_FACTOR * self.default_steps

    def sampling_choice(self, steps: int | None, true_cfg_scale: float | None) -> tuple[int, float]:
        """The ``(steps, true_cfg_scale)`` an ``edit`` call with these arguments samples with: None means the
        pipeline's ``default_steps`` / ``default_true_cfg_scale``."""
        return (self.default_steps if steps is None else steps,
                self.default_true_cfg_scale if true_cfg_scale is None else true_cfg_scale)

    def sampler_choice(self, choice: str | None) -> str:
        """The sampler an ``edit(sampler=choice)`` call runs, one of ``SAMPLERS``: None means the scheduler
        config's (``"stochastic"`` when it has ``stochastic_sampling``)."""
        if choice is None:
            return "stochastic" if self.scheduler_config.stochastic_sampling else "euler"
        if choice not in SAMPLERS:
            raise ValueError(f"sampler must be None or one of {', '.join(SAMPLERS)}, got {choice!r}")
        return choice

    def keep_unedited_config(self, choice: bool | PreserveConfig | None) -> PreserveConfig | None:
        """The ``PreserveConfig`` an ``edit(keep_unedited=choice)`` call uses, None when it is off."""
        if choice is None:
            return self.keep_unedited
        if isinstance(choice, PreserveConfig):
            return choice
        if isinstance(choice, bool):
            return (self.keep_unedited or PreserveConfig()) if choice else None
        raise TypeError(f"keep_unedited must be None, a bool or a PreserveConfig, got {type(choice).__name__}")

    def _keep_unedited(self, pixels: torch.Tensor, latents: torch.Tensor, prepared: _Prepared,
                       config: PreserveConfig) -> tuple[torch.Tensor, bool]:
        """``preserve.keep_unedited`` with Picture 1 at the output's size (its reference latents reused when it was
        encoded at that size); not applied when Picture 1 has another aspect."""
        first_ref = prepared.first_ref
        height, width = pixels.shape[-2:]
        other_aspect = abs(math.log(first_ref.width / first_ref.height) - math.log(width / height)) > 0.02
        if prepared.first_ref_canvas is None and other_aspect:  # in size mode "match" Picture 1 is the canvas
            log.info("keep_unedited: Picture 1 (%dx%d) has another aspect than the %dx%d output, result kept",
                     first_ref.width, first_ref.height, width, height)
            return pixels, False
        source = prepared.first_ref_canvas
        if source is None:
            source = to_tensor(first_ref, width, height).to(pixels.device, self._vae_dtype())
        kept, applied = preserve.keep_unedited(self.vae, pixels, latents, source, config, prepared.first_ref_latents)
        log.info("keep_unedited: %s", "Picture 1 kept outside the edited area" if applied else "a whole-image "
                 f"edit (over {100 * config.max_edited_fraction:.0f}% of the latents changed), result kept")
        return kept, applied

    def _encode(self, prompt: str, refs: list[Image.Image],
                options: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeds [1, L, D], mask [1, L] or None when nothing is padded) for one prompt; ``options`` are the
        encoder's keywords (``_condition_options``)."""
        cond = self.encoder.encode([prompt], refs, **(options or {}))
        embeds, mask = cond.embeds, cond.mask
        if not refs:
            embeds = embeds[:, : self.max_text_tokens]
            mask = mask[:, : self.max_text_tokens] if mask is not None else None
        # the reference drops an all-ones mask, which selects the unmasked attention path
        if mask is not None and bool(mask.all()):
            mask = None
        embeds = embeds.to(self.device, self.dtype)
        return embeds, (mask.to(self.device) if mask is not None else None)

    def _predictor(self, condition: tuple[torch.Tensor, torch.Tensor | None], prepared: _Prepared) -> VelocityFn:
        embeds, mask = condition
        ref_tokens = prepared.ref_tokens

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # [B, N_target, D] (+ [B, N_refs, D]) -> the model crops its output back to the target tokens; one
            # condition and one set of references serve every seed of the batch
            b = x.shape[0]
            hidden = x if ref_tokens is None else torch.cat([x, ref_tokens.to(x.dtype).expand(b, -1, -1)], dim=1)
            return self.transformer(hidden, embeds.expand(b, *embeds.shape[1:]),
                                    None if mask is None else mask.expand(b, *mask.shape[1:]), t, prepared.img_shapes)

        return velocity

    def _vae_dtype(self) -> torch.dtype:
        return compute_dtype(self.vae)
