"""``TrainBatch``: one rank's step input as the model consumes it -- latents and condition -- and the two ways to
make one.

* Online (``encode_pixel_batch``): a ``pixels.PixelBatch`` goes through the frozen VAE (target and every source
  slot, one batched call each, normalised latents) and the condition encoder (one call per sample, since each
  sample has its own reference images: ``encoder.encode([instruction], sources)``). A dropped text (SIA's text
  drop) uses the null condition instead: the empty prompt encoded once, without images, as FireRed's trainer does.
* Pairs (``encode_pair_batch``, DPO): the winners as above, and only the losers' targets through the VAE once
  more; the loser batch shares the winner's sources and condition (the same tensors), so a pair's sources and
  instruction are encoded once.
* Cached (``load_cached_batch``): the same tensors read from a ``cache.LatentCache``; SIA's per-sample EN/CN choice
  and text drop still apply, the sources keep their stored order (see ``cache``).

Conditions of different lengths are right-padded with zeros into ``embeds [B, L, D]`` with ``mask [B, L]``
(1 real, 0 pad); when nothing is padded the mask is dropped (``None``), which selects the transformer's unmasked
attention, the same numbers at less cost (the inference pipeline does the same).

``weight`` is 1 for a real batch; a rank whose samples were all bad gets a zero-filled batch of the planned shapes
with weight 0 (``placeholder_batch``), so it still joins the collective gradient exchange of the step.

Public API: ``TrainBatch``, ``pad_conditions``, ``encode_pixel_batch``, ``encode_pair_batch``, ``load_cached_batch``,
``placeholder_batch``, ``NullCondition``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..cache.store import CachedSample, LatentCache
from ..data.bucket_sampler import BatchPlan
from ..data.buckets import Dims
from ..data.record import BadSampleError, EditRecord, SkipReason
from ..data.sia import SIAConfig, choose_instruction
from ..data.skips import SkipLog
from ..data.pairs import PairPixelBatch
from ..data.pixels import PixelBatch, text_language

log = logging.getLogger(__name__)

__all__ = ["TrainBatch", "pad_conditions", "encode_pixel_batch", "encode_pair_batch", "load_cached_batch", "placeholder_batch",
           "NullCondition"]


@dataclass(frozen=True)
class TrainBatch:
    """Latents and condition of one rank's step (sources after SIA, in the order the model sees them)."""

    step: int  # the sampler's (micro-)step this batch was planned for
    indices: tuple[int, ...]  # record positions; the per-sample noise is seeded by them
    ids: tuple[str, ...]
    target: torch.Tensor  # [B, C, H/f, W/f] normalised latents
    sources: tuple[torch.Tensor, ...]  # each [B, C, h_k/f, w_k/f]
    embeds: torch.Tensor  # [B, L, D]
    mask: torch.Tensor | None  # [B, L] long, or None when no row is padded
    languages: tuple[str, ...]  # "en" / "cn" / "null" per sample
    weight: float = 1.0  # 0 for a placeholder batch (all samples of this rank were bad)

    @property
    def size(self) -> int:
        return int(self.target.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TrainBatch":
        """Moved to ``device``; ``dtype`` applies to the float tensors (latents, embeddings)."""
        move = lambda t: t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)  # noqa: E731
        return replace(self, target=move(self.target), sources=tuple(move(s) for s in self.sources),
                       embeds=move(self.embeds),
                       mask=None if self.mask is None else self.mask.to(device, non_blocking=True))


def pad_conditions(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample embeddings ``[L_i, D]`` -> ``(embeds [B, L, D], mask [B, L] long or None)``, right-padded."""
    if not rows:
        raise ValueError("pad_conditions: no rows")
    length, dim = max(r.shape[0] for r in rows), rows[0].shape[1]
    embeds = rows[0].new_zeros(len(rows), length, dim)
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return embeds, (None if bool(mask.all()) else mask)


def _trimmed(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row 0 of an encoder result without its padding: ``[L_real, D]``."""
    return embeds[0, : int(mask[0].sum())]


class NullCondition:
    """The null condition ``[L0, D]``: the empty prompt encoded once without images (computed lazily)."""

    def __init__(self, encoder: Any = None, embeds: torch.Tensor | None = None) -> None:
        if encoder is None and embeds is None:
            raise ValueError("NullCondition needs an encoder or precomputed embeddings")
        self._encoder, self._embeds = encoder, embeds

    @property
    def embeds(self) -> torch.Tensor:
        if self._embeds is None:
            cond = self._encoder.encode([""], [])
            self._embeds = _trimmed(cond.embeds, cond.mask).detach()
        return self._embeds


# ---------------------------------------------------------------------------------------------------------------
# online


def _encode_latents(vae: Any, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return vae.encode(pixels.to(device=device, dtype=dtype))  # [B, C, H/f, W/f], normalised


@torch.no_grad()
def encode_pixel_batch(pixels: PixelBatch, vae: Any, encoder: Any, null: NullCondition, *,
                       device: torch.device, vae_dtype: torch.dtype = torch.float32) -> TrainBatch:
    """Latents and condition of ``pixels`` from the frozen VAE and encoder (see the module docstring)."""
    if pixels.size == 0:
        return placeholder_batch(pixels.plan, pixels.source_dims, vae.config.z_dim, vae.spatial_compression,
                                 null.embeds.shape[-1])
    target = _encode_latents(vae, pixels.target, device, vae_dtype)
    sources = tuple(_encode_latents(vae, s, device, vae_dtype) for s in pixels.sources)
    rows = []
    for sample in pixels.samples:
        if sample.language == "null":
            rows.append(null.embeds.to(device))
        else:
            cond = encoder.encode([sample.instruction], list(sample.source_images))
            rows.append(_trimmed(cond.embeds, cond.mask).to(device))
    embeds, mask = pad_conditions([r.float() for r in rows])
    return TrainBatch(step=pixels.plan.step, indices=tuple(s.index for s in pixels.samples),
                      ids=tuple(s.id for s in pixels.samples), target=target.float(),
                      sources=tuple(s.float() for s in sources), embeds=embeds, mask=mask,
                      languages=tuple(s.language for s in pixels.samples))


@torch.no_grad()
def encode_pair_batch(pairs: PairPixelBatch, vae: Any, encoder: Any, null: NullCondition, *, device: torch.device,
                      vae_dtype: torch.dtype = torch.float32) -> tuple[TrainBatch, TrainBatch]:
    """(winner, loser) batches of ``pairs``: one condition and source encoding, two targets."""
    winner = encode_pixel_batch(pairs.winner, vae, encoder, null, device=device, vae_dtype=vae_dtype)
    if pairs.size == 0:  # both placeholders: weight 0, the same zero target
        return winner, winner
    loser = _encode_latents(vae, pairs.loser, device, vae_dtype).float()
    return winner, replace(winner, target=loser)


# ---------------------------------------------------------------------------------------------------------------
# cached


def _check_cached(sample: CachedSample, plan: BatchPlan, cache: LatentCache) -> None:
    if sample.dims != plan.dims:
        raise ValueError(f"{cache.root}: sample {sample.id!r} was cached at sizes {sample.dims} but this run plans "
                         f"{plan.dims}; the cache was made with other data or sampler settings: rebuild it")


def load_cached_batch(records: Sequence[EditRecord], plan: BatchPlan, cache: LatentCache, sia: SIAConfig,
                      skips: SkipLog | None = None) -> TrainBatch:
    """The batch of ``plan`` from the cache; samples missing from it are counted as skipped."""
    chosen: list[tuple[int, CachedSample, str]] = []
    for index in plan.indices:
        record = records[index]
        if record.id not in cache:
            (skips if skips is not None else SkipLog()).add(
                BadSampleError(SkipReason.MISSING_FILE, record.id, f"not in the cache {cache.root}"))
            continue
        sample = cache[record.id]
        _check_cached(sample, plan, cache)
        chosen.append((index, sample, text_language(record, choose_instruction(record, sia, plan.bucket_epoch))))
    null = cache.null_embeds
    if not chosen:
        return placeholder_batch(plan, plan.dims.sources, cache.spec.latent_channels, cache.spec.compression,
                                 null.shape[-1])
    rows = [null if lang == "null" else sample.conds[lang] for _, sample, lang in chosen]
    embeds, mask = pad_conditions([r.float() for r in rows])
    n_sources = len(plan.dims.sources)
    return TrainBatch(step=plan.step, indices=tuple(i for i, _, _ in chosen), ids=tuple(s.id for _, s, _ in chosen),
                      target=torch.stack([s.target.float() for _, s, _ in chosen]),
                      sources=tuple(torch.stack([s.sources[k].float() for _, s, _ in chosen])
                                    for k in range(n_sources)),
                      embeds=embeds, mask=mask, languages=tuple(lang for _, _, lang in chosen))


def placeholder_batch(plan: BatchPlan, source_dims: Sequence[Dims], channels: int, compression: int,
                      embed_dim: int) -> TrainBatch:
    """A zero batch of one sample at ``plan``'s sizes with weight 0 (see the module docstring)."""
    log.warning("step %d: no usable sample on this rank; running a zero-weighted step to stay in sync", plan.step)

    def zeros(d: Dims) -> torch.Tensor:
        return torch.zeros(1, channels, d.height // compression, d.width // compression)

    return TrainBatch(step=plan.step, indices=(-1,), ids=("<placeholder>",), target=zeros(plan.dims.target),
                      sources=tuple(zeros(d) for d in source_dims), embeds=torch.zeros(1, 1, embed_dim), mask=None,
                      languages=("null",), weight=0.0)
