"""``firered cache`` for a training config: which samples, which model, which folder, which processes.

``cache_from_config(cfg)`` lists the config's training and validation samples exactly as the trainer will,
loads the model (VAE + condition encoder; the transformer is loaded too but unused), and runs
``cache.build.build_cache`` into ``data.cache_dir`` -- first for the training samples, then for the validation
samples (each set gets its own bucket sizes, as in training). Under ``accelerate launch`` every process takes its
share (``scale.distributed.process_state`` gives rank, world size, device and the barrier).

Public API: ``cache_from_config``.
"""

from __future__ import annotations

import logging

from firered_core.config import ConfigError
from firered_core.progress import tqdm_progress

from .build import build_cache, make_cache_spec
from ..config import TrainConfig
from ..data.skips import SkipLog
from ..scale.distributed import process_state
from ..model.components import build_components, parse_dtype
from ..data.records import read_records, validation_records

log = logging.getLogger(__name__)

__all__ = ["cache_from_config"]


def cache_from_config(cfg: TrainConfig, *, batch_size: int = 8, shard_size: int = 256,
                      latent_dtype: str = "float32") -> int:
    """Cache every training and validation sample of ``cfg``; returns how many this process wrote."""
    if not cfg.data.cache_dir:
        raise ConfigError("data.cache_dir: not set; give the folder to write the cache to "
                          "(--data.cache_dir=PATH)")
    state = process_state()
    skips = SkipLog()
    records = read_records(cfg.data.reader, cfg.data.path, default_task=cfg.data.default_task, skips=skips)
    val = validation_records(records, reader=cfg.data.reader, val_path=cfg.data.val_path,
                             n_val=cfg.logging.n_val_samples, default_task=cfg.data.default_task, skips=skips)
    comps = build_components(cfg.model, seed=cfg.seed, load_encoder=True, device=state.device)
    if comps.encoder is None:
        raise ConfigError(f"model.weights {cfg.model.weights!r} has no condition encoder to cache with; add the "
                          "Qwen2.5-VL text-encoder file (comma-separated) or use a diffusers folder")
    spec = make_cache_spec(cfg.data.sampler, comps.vae, comps.encoder.dim, latent_dtype=latent_dtype,
                           model=comps.source)
    written = 0
    for name, samples in (("training", records), ("validation", val)):
        if not samples:
            continue
        log.info("caching %d %s samples into %s", len(samples), name, cfg.data.cache_dir)
        with tqdm_progress(f"cache {name}", disable=not state.is_main_process) as progress:
            written += build_cache(samples, cfg.data.cache_dir, spec, vae=comps.vae, encoder=comps.encoder,
                                   sampler=cfg.data.sampler, rank=state.process_index,
                                   world_size=state.num_processes, batch_size=batch_size, shard_size=shard_size,
                                   device=state.device, vae_dtype=parse_dtype(cfg.model.dtype),
                                   barrier=state.wait_for_everyone, progress=progress, skips=skips)
    if skips.total:
        log.warning("cache: %d bad samples skipped (%s)", skips.total, skips.counts)
    return written
