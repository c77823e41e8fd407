"""The training loop: ``Trainer(cfg).run()`` trains the transformer (fully or through a LoRA) for one stage.

::

    from firered_train.config import load_config
    from firered_train.loop.trainer import Trainer
    result = Trainer(load_config("tiny_lora", ["--data.path=pairs/"])).run()   # or: firered train tiny_lora ...

One optimizer step = ``schedule.grad_accumulation`` micro-steps; each micro-step:

1. the bucket sampler plans the step (same bucket, hence shapes, on every rank; this rank's own samples) and a
   DataLoader worker loads it (``loader``): pixels with SIA applied, or cached latents + embeddings;
2. online runs encode it here (``batch.encode_pixel_batch``: frozen VAE, condition encoder, null condition for
   dropped texts);
3. noise levels (``objectives.TimestepSampler``, stratified by position in the global batch by default) and noise
   are drawn from generators seeded by (seed, micro-step, sample), on rollout steps the sampler's own state at one
   of its levels is built first (``rollout``), and the loss is computed (``step.step_loss``:
   ``objectives.flow_matching_loss``) under ``torch.autocast`` to bfloat16 when ``precision: bf16``; backward,
   with DDP's gradient all-reduce only on the last micro-step.

DPO (``objective.kind: dpo``, ``data.reader: preference``): each micro-step loads pairs (``data.pairs``: winners
planned by the same bucket sampler, losers fitted to the winner's size), encodes them once with
``batch.encode_pair_batch``, draws the levels and noise of the winner batch with the same seeded functions (so
winner and loser share them, and resume stays exact) and runs ``pair_step.dpo_step`` against the reference of
``dpo.reference``: the network with its LoRA off, or a frozen copy taken before training. The metrics add the DPO
terms (``loss_w``, ``loss_l``, ``diff_w``, ``diff_l``, ``reward_margin``, ``accuracy``: ``objectives.dpo``);
validation keeps the held-out flow loss (of the preferred results).

Consistency (``consistency.enabled``, the SFT stage's identity loss): each flow micro-step adds the term of
``consistency_stage`` computed from the same ``x_t``, ``v`` and ``s`` as its flow loss; the logged ``loss`` is
their sum, and the metrics add ``consistency_loss``, ``consistency_faces`` and ``consistency_active``.

DiffusionNFT (``objective.kind: nft``): each micro-step's records are prompts. The old policy (``objectives.
OldPolicy``, a float32 copy of the trained weights swapped in) samples ``nft.group_size`` results per prompt, the
reward of ``nft.reward`` grades them (``nft_rewards``), and the NFT loss trains on noisy copies of them
(``nft_step.nft_round``); after each optimizer step the old policy moves towards the trained weights on its decay
schedule. The reference of the KL term is the network with its LoRA off, or a frozen copy for full fine-tuning. The
metrics add the round's mean reward and the NFT terms (``NFT_METRICS``); the old policy is part of every
checkpoint.

Then: gradient clipping to ``optim.grad_clip``, optimizer step, LR schedule step, EMA update (``objectives.EMA``,
float32, exact state), and every ``logging.every_steps`` a metrics line (loss, LR, grad norm, loss per noise-level
bin; TensorBoard when available), every ``checkpoint.every_steps`` an atomic checkpoint (``loop.run_state``), every
``logging.validation_every`` the held-out loss and a sample grid (``validation``). At the end: the final
checkpoint, the exported LoRA / transformer (raw and EMA, ``export.lora``) and ``loss_curve.png``.

Outputs under ``output_dir``: ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``tensorboard/``,
``samples/step-NNNNNN.png``, ``checkpoints/`` (unless ``checkpoint.dir``), ``lora.safetensors`` or
``transformer.safetensors`` (+ ``_ema``), ``loss_curve.png``.

Distributed: see ``scale.distributed``. Exact resume: see ``run_state``.

Hosts that run training in their own process (the ComfyUI node, through ``in_process``) pass the model they
already hold (``Trainer(cfg, components=...)``) and two hooks to ``run``: ``on_step`` hears a ``StepReport``
after every optimizer step (loss, learning rate, and the sample grid when one was drawn), and ``cancel``
(``firered_core.progress.CancelFn``) is polled before every step. When it returns true (``Cancelled``) or either
hook raises (the host's own interrupt exception: ComfyUI's progress bar raises it too), the steps trained since
the last checkpoint are saved as a checkpoint first, so ``checkpoint.resume: latest`` continues exactly, and
nothing is exported. The hooks are for single-process runs: every rank would have to agree on a cancel.

Public API: ``Trainer``, ``TrainResult``, ``StepReport``, ``StepCallback``, ``DPO_METRICS``, ``NFT_METRICS``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from firered_core.config import ConfigError
from firered_core.images import save_image
from firered_core.preserve import PreserveConfig
from firered_core.progress import CancelFn, check_cancel

from .batch import NullCondition, TrainBatch, encode_pair_batch, encode_pixel_batch
from ..cache.build import make_cache_spec
from ..config import TrainConfig, save_config
from ..scale.distributed import cpu_fsdp, fsdp_requested, launch_reshard_after_forward, make_accelerator, step_seed
from .loader import LoadedStep, StepDataset, make_loader
from ..export.lora import export_run
from ..model.components import LORA_NAME, TrainComponents, build_components, make_trainable, parse_dtype
from ..objectives import EMA, OldPolicy, TimestepSampler
from ..observe import MetricsLog, TensorBoardLogger, TimestepLossBins, TrainProgress, read_metrics, save_loss_curve
from .optim import build_lr_schedule, build_optimizer
from ..data.pairs import PairPixelBatch
from ..data.pixels import PixelBatch
from ..scale.sharding import (gather_full, gradient_sync, is_sharded, materialize, meta_copy, shard_numel, shard_transformer,
                       to_float)
from .nft_rewards import NFTRewards, nft_judge
from .nft_step import nft_round
from .pair_step import dpo_step
from .consistency_stage import ConsistencyStage, check_setup
from .rollout import rollout_level, rollout_start
from .step import seeded_levels, seeded_noise, step_loss, target_tokens
from .run_data import TrainData, build_train_data
from .run_state import RunState, resolve_resume, resume_run_state, save_run_state
from .validator import ValidationSetup, Validator

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "StepReport", "StepCallback", "DPO_METRICS", "NFT_METRICS"]

# the DPOTerms a DPO run logs (objectives.dpo says what each means)
DPO_METRICS = ("loss_w", "loss_l", "diff_w", "diff_l", "reward_margin", "accuracy")
# what an NFT run logs: the round's mean reward and share of results with reward 1, then the NFTTerms
NFT_METRICS = ("reward", "reward_max", "policy", "positive", "negative", "kl", "mean_r", "old_deviation", "flow_mse")
TERM_METRICS = {"dpo": DPO_METRICS, "nft": NFT_METRICS}


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports."""

    steps: int
    final_loss: float  # mean training loss of the last logging window
    val_losses: list[tuple[int, float]]  # (step, held-out loss) of every validation
    exported: list[Path]
    checkpoint: Path | None


@dataclass(frozen=True)
class StepReport:
    """What ``run(on_step=...)`` hears after each optimizer step."""

    step: int  # optimizer steps done
    total: int  # schedule.max_steps
    loss: float  # mean training loss of this step
    lr: float
    preview: Any = None  # the validation sample grid (PIL image) drawn after this step, else None


StepCallback = Callable[[StepReport], None]


class Trainer:
    """One training run of ``cfg`` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, *, accelerator: Any = None,
                 components: TrainComponents | None = None) -> None:
        """``components``: train a model the caller already holds (``cfg.model`` then only labels it)."""
        self.cfg = cfg
        if cfg.consistency.enabled:  # a missing face-feature file or extra fails before data and model load
            check_setup(cfg.consistency)
        self.acc = accelerator if accelerator is not None else make_accelerator()
        self.device, self.rank, self.world = self.acc.device, self.acc.process_index, self.acc.num_processes
        self.is_main = bool(self.acc.is_main_process)
        self.out = Path(cfg.output_dir)
        self.data: TrainData = build_train_data(cfg, self.rank, self.world)
        comps = components if components is not None else build_components(
            cfg.model, seed=cfg.seed, load_encoder=self.data.cache is None, device=self.device)
        self.comps = comps
        self.patch = comps.transformer.config.patch_size
        self._check_token_size()
        if self.data.cache is not None:
            self.data.cache.check(make_cache_spec(cfg.data.sampler, comps.vae,
                                                  comps.transformer.config.joint_attention_dim,
                                                  latent_dtype=self.data.cache.spec.latent_dtype))
        self.reference = self._frozen_reference(comps.transformer)  # before any training changes it
        params = make_trainable(comps.transformer, cfg.model, cfg.lora, seed=cfg.seed)
        # FSDP: the exports need the whole model on rank 0; its parameter-free copy is taken while it is whole
        self.skeleton = meta_copy(comps.transformer) if self.is_main and self.world > 1 and fsdp_requested() else None
        if cpu_fsdp(self.acc):
            params = shard_transformer(comps.transformer, params, world_size=self.world,
                                       reshard_after_forward=launch_reshard_after_forward())
        optimizer = build_optimizer(params, cfg.optim, self.device)
        if is_sharded(comps.transformer):  # sharded here already: accelerate would wrap it in DDP
            self.model, self.optimizer = comps.transformer, self.acc.prepare(optimizer)
        else:
            self.model, self.optimizer = self.acc.prepare(comps.transformer, optimizer)
        self.sharded = is_sharded(comps.transformer)
        # accelerate's FSDP replaces the parameter objects: clip what the optimizer holds
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]] if self.sharded else params
        self.lr_schedule = build_lr_schedule(self.optimizer, cfg.optim, cfg.schedule.max_steps)
        trained = {name: p for name, p in comps.transformer.named_parameters() if p.requires_grad}
        self.timesteps = TimestepSampler(cfg.objective.timesteps, comps.scheduler)
        self.ema = EMA.from_config(trained, cfg.ema) if cfg.ema.enabled else None
        self.old, self.rewards = self._nft_parts(trained)
        self.null = (NullCondition(embeds=self.data.cache.null_embeds) if self.data.cache is not None
                     else NullCondition(encoder=comps.encoder))
        self.state = RunState(step=0, sampler=self.data.sampler, skips=self.data.skips,
                              bins=TimestepLossBins(cfg.logging.loss_bins),
                              rollout_bins=TimestepLossBins(cfg.logging.loss_bins))
        # a sharded forward pass needs every rank: they all validate, in step, and the main process reports
        self.validator = (Validator(self.data, self._validation_setup()) if self.is_main or self.sharded
                          else None)
        self._last_loss = float("nan")
        self._terms_window: list[dict[str, float]] = []  # DPO / NFT terms of the micro-steps since the last log
        # the SFT identity loss added to flow micro-steps (consistency_stage), None when consistency is off
        self.consistency = (ConsistencyStage.build(cfg.consistency, comps.vae, self.data.records, patch=self.patch,
                                                   device=self.device) if cfg.consistency.enabled else None)

    # -----------------------------------------------------------------------------------------------------------
    # setup helpers
    # -----------------------------------------------------------------------------------------------------------

    def _frozen_reference(self, transformer: torch.nn.Module) -> torch.nn.Module | None:
        """DPO with ``dpo.reference: frozen_copy``, or full NFT with a KL term: the starting network, copied and
        frozen; else None."""
        cfg = self.cfg
        dpo_copy = cfg.objective.kind == "dpo" and cfg.dpo.reference == "frozen_copy"
        nft_copy = cfg.objective.kind == "nft" and cfg.nft.kl_weight > 0 and not cfg.is_lora
        if not (dpo_copy or nft_copy):
            return None
        reference = copy.deepcopy(transformer).requires_grad_(False).eval()
        log.info("%s: a frozen copy of the starting transformer is the reference", cfg.objective.kind)
        return reference

    def _nft_parts(self, trained: dict[str, torch.nn.Parameter]) -> tuple[OldPolicy | None, NFTRewards | None]:
        """An NFT run's old policy and reward (None, None for other runs)."""
        cfg = self.cfg
        if cfg.objective.kind != "nft":
            return None, None
        if self.sharded:
            raise ConfigError("objective.kind: nft does not run on a sharded (FSDP) model yet: the old policy is "
                              "swapped into the parameters; launch without FSDP")
        manifest = cfg.data.path if cfg.data.reader == "jsonl" else None
        rewards = NFTRewards(self.data.records, reward=cfg.nft.reward, mode=cfg.nft.reward_mode, manifest=manifest,
                             closeness=cfg.nft.closeness_weight, judge=nft_judge(cfg.nft),
                             preserve=PreserveConfig() if cfg.nft.keep_unedited else None)
        return OldPolicy(trained, cfg.nft), rewards

    def _validation_setup(self) -> ValidationSetup:
        cfg, comps = self.cfg, self.comps
        return ValidationSetup(vae=comps.vae, encoder=comps.encoder, scheduler=comps.scheduler, null=self.null,
                               sampler=cfg.data.sampler, logging=cfg.logging, seed=cfg.seed, stage=cfg.stage,
                               patch=self.patch, device=self.device, vae_dtype=parse_dtype(cfg.model.dtype),
                               autocast=self.autocast)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast when ``precision: bf16`` (weights keep their dtype; matmuls run in bf16)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    @property
    def transformer(self) -> torch.nn.Module:
        """The bare transformer (DDP / FSDP wrappers removed)."""
        return self.acc.unwrap_model(self.model)

    def _check_token_size(self) -> None:
        unit = int(self.comps.vae.spatial_compression) * self.patch
        if self.cfg.data.sampler.pixels_per_token != unit:
            raise ConfigError(f"data.sampler.pixels_per_token is {self.cfg.data.sampler.pixels_per_token} but the "
                              f"model has {unit} pixels per token (VAE {self.comps.vae.spatial_compression}x times "
                              f"patch {self.patch}); set it to {unit}")

    def _resume(self) -> None:
        if self.cfg.checkpoint.resume is None:
            return
        path = resolve_resume(self.cfg.checkpoint.resume, self.cfg.checkpoint_dir)
        if path is not None:
            resume_run_state(path, self.state, transformer=self.transformer, lora=self.cfg.is_lora,
                             optimizer=self.optimizer, lr_schedule=self.lr_schedule, ema=self.ema,
                             grad_accumulation=self.cfg.schedule.grad_accumulation, rank=self.rank,
                             is_main=self.is_main, old_policy=self.old)

    # -----------------------------------------------------------------------------------------------------------
    # one micro-step
    # -----------------------------------------------------------------------------------------------------------

    def _to_train_batch(self, loaded: PixelBatch | TrainBatch) -> TrainBatch:
        if isinstance(loaded, PixelBatch):
            vae_dtype = parse_dtype(self.cfg.model.dtype)
            loaded = encode_pixel_batch(loaded, self.comps.vae, self.comps.encoder, self.null, device=self.device,
                                        vae_dtype=vae_dtype)
        return loaded.to(self.device, torch.float32)

    def _to_pair_batches(self, loaded: PairPixelBatch) -> tuple[TrainBatch, TrainBatch]:
        batch_w, batch_l = encode_pair_batch(loaded, self.comps.vae, self.comps.encoder, self.null,
                                             device=self.device, vae_dtype=parse_dtype(self.cfg.model.dtype))
        return batch_w.to(self.device, torch.float32), batch_l.to(self.device, torch.float32)

    def _sync_context(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """no_sync: gradients of early micro-steps stay local until the last one all-reduces."""
        if sync:
            return contextlib.nullcontext()
        return gradient_sync(self.model, False) if self.sharded else self.acc.no_sync(self.model)

    def _draws(self, batch: TrainBatch, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels and noise of a micro-step, each seeded by what it belongs to, so resume needs no replay;
        the global RNG only drives LoRA dropout and is reseeded per micro-step for the same reason."""
        torch.manual_seed(step_seed(self.cfg.seed, "global", micro, self.rank))
        s = seeded_levels(self.timesteps, batch, self.cfg.seed, self.patch, step=self.state.step, rank=self.rank,
                          world_size=self.world)
        return s, seeded_noise(batch, self.cfg.seed, self.patch)

    def _dpo_micro_step(self, batch_w: TrainBatch, batch_l: TrainBatch, micro: int, sync: bool) -> torch.Tensor:
        """One micro-step of pairs: the levels and noise of the winner batch serve both (``pair_step``)."""
        s, noise = self._draws(batch_w, micro)
        with self._sync_context(sync):
            with self.autocast():
                out = dpo_step(self.model, self.reference, batch_w, batch_l, s, noise, self.cfg.objective,
                               self.cfg.dpo, patch=self.patch,
                               lora=LORA_NAME if self.reference is None else None)
            self.acc.backward(out.terms.loss / self.cfg.schedule.grad_accumulation)
        if batch_w.weight > 0:
            self.state.bins.update(out.s.cpu(), out.per_sample_w.cpu())
            self._terms_window.append({name: float(getattr(out.terms, name)) for name in DPO_METRICS})
        return out.terms.loss.detach()

    def _nft_micro_step(self, batch: TrainBatch, micro: int, sync: bool) -> torch.Tensor:
        """One sampling round and NFT update on the prompts of ``batch`` (``nft_step``)."""
        if batch.weight == 0:  # a placeholder (every sample of this rank was bad): no prompts to sample
            return self._micro_step(batch, micro, sync)
        assert self.old is not None and self.rewards is not None  # made for every NFT run
        with self._sync_context(sync):
            out = nft_round(self.model, self.transformer, batch, lambda samples: self._draws(samples, micro),
                            vae=self.comps.vae, rewards=self.rewards, config=self.cfg.nft, old=self.old,
                            reference=self.reference, lora=LORA_NAME if self.cfg.is_lora else None,
                            scheduler=self.comps.scheduler, seed=self.cfg.seed, patch=self.patch,
                            autocast=self.autocast)
            self.acc.backward(out.terms.loss / self.cfg.schedule.grad_accumulation)
        terms = {name: float(getattr(out.terms, name)) for name in NFT_METRICS[2:]}
        self._terms_window.append({"reward": float(out.rewards.mean()),
                                   "reward_max": float((out.rewards >= 1).double().mean()), **terms})
        return out.terms.loss.detach()

    def _micro_step(self, batch: TrainBatch, micro: int, sync: bool) -> torch.Tensor:
        s, noise = self._draws(batch, micro)
        start = None
        level = rollout_level(self.cfg.objective.rollout, self.comps.scheduler, seed=self.cfg.seed,
                              micro_step=batch.step, tokens=target_tokens(batch, self.patch))
        if level is not None:  # the sampler's own state at one of its levels (firered_train.loop.rollout)
            s = torch.full_like(s, level.level)
            with self.autocast():
                start = rollout_start(self.model, batch, level, seed=self.cfg.seed, patch=self.patch)
        with self._sync_context(sync):
            with self.autocast():
                out = step_loss(self.model, batch, s, noise, self.cfg.objective, patch=self.patch, start=start)
                loss = out.loss if self.consistency is None else out.loss + self.consistency.term(batch, out)
            self.acc.backward(loss / self.cfg.schedule.grad_accumulation)
        if batch.weight > 0:  # a rollout step's loss carries the estimate's error: binned apart from the plain
            bins = self.state.bins if start is None else self.state.rollout_bins
            bins.update(out.s.cpu(), out.per_sample.cpu())
        # one line per rank and micro-step: what the tests read to check that ranks agree on shapes
        log.debug("batch-shapes rank=%d micro=%d batch=%d target=%s sources=%s", self.rank, micro, batch.size,
                  tuple(batch.target.shape[-2:]), [tuple(x.shape[-2:]) for x in batch.sources])
        return loss.detach()

    def _optimizer_step(self) -> float:
        clip = self.cfg.optim.grad_clip
        norm = self.acc.clip_grad_norm_(self.params, clip if clip is not None else math.inf)
        self.optimizer.step()
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.state.step + 1)
        if self.old is not None:
            self.old.update(self.state.step + 1)
        return to_float(norm)

    # -----------------------------------------------------------------------------------------------------------
    # the run
    # -----------------------------------------------------------------------------------------------------------

    def _prepare_outputs(self) -> tuple[MetricsLog | None, TensorBoardLogger | None]:
        if not self.is_main:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "config.yaml", overwrite=True)
        metrics = MetricsLog(self.out / "metrics.jsonl")
        metrics.rewind(self.state.step)  # a resumed run trains those steps again
        return metrics, TensorBoardLogger(self.out / "tensorboard", enabled=self.cfg.logging.tensorboard)

    def run(self, *, on_step: StepCallback | None = None, cancel: CancelFn | None = None) -> TrainResult:
        """Train from the start, or from ``checkpoint.resume``, to ``schedule.max_steps``.

        ``on_step`` and ``cancel``: see the module docstring.
        """
        self._resume()
        metrics, tb = self._prepare_outputs()
        try:
            val_losses, checkpoint = self._loop(metrics, tb, on_step, cancel)
        except BaseException:
            self._close(metrics, tb)
            raise
        exported = self._finish(metrics, tb)
        return TrainResult(steps=self.state.step, final_loss=self._last_loss, val_losses=val_losses,
                           exported=exported, checkpoint=checkpoint)

    def _loop(self, metrics: MetricsLog | None, tb: TensorBoardLogger | None, on_step: StepCallback | None,
              cancel: CancelFn | None) -> tuple[list[tuple[int, float]], Path | None]:
        cfg, start = self.cfg, self.state.step
        batches = self._batches(start)
        window: list[float] = []
        val_losses: list[tuple[int, float]] = []
        checkpoint: Path | None = None
        saved = start  # the step the newest checkpoint holds
        if cfg.logging.validation_every and start == 0:
            self._validate(metrics, tb, 0, val_losses)  # the untrained baseline of the held-out curve
        started = time.perf_counter()
        with TrainProgress(cfg.schedule.max_steps, start_step=start, enabled=self.is_main and
                           cfg.logging.progress_bar, desc=cfg.stage) as bar:
            while self.state.step < cfg.schedule.max_steps:
                if cancel is not None:
                    self._hook(saved, check_cancel, cancel, f"training before step {self.state.step + 1}")
                loss, norm = self._train_step(batches)
                step, last = self.state.step, self.state.step == cfg.schedule.max_steps
                lr = self.lr_schedule.get_last_lr()[0]
                window.append(loss)
                bar.update(step, loss=loss, lr=lr)
                if step % cfg.logging.every_steps == 0 or last:
                    self._log(metrics, tb, step, window, norm)
                    window = []
                if step % cfg.checkpoint.every_steps == 0 or last:
                    checkpoint, saved = self._checkpoint(), step
                grid = None
                if cfg.logging.validation_every and (step % cfg.logging.validation_every == 0 or last):
                    grid = self._validate(metrics, tb, step, val_losses)
                if on_step is not None:
                    self._hook(saved, on_step, StepReport(step=step, total=cfg.schedule.max_steps, loss=loss, lr=lr,
                                                          preview=grid))
        log.info("trained %d steps in %.1f s (%d skipped samples)", cfg.schedule.max_steps - start,
                 time.perf_counter() - started, self.state.skips.total)
        return val_losses, checkpoint

    def _hook(self, saved: int, call: Callable[..., Any], *args: Any) -> None:
        """``call(*args)``, a host hook between steps; if it stops the run, the steps trained since ``saved`` are
        checkpointed first."""
        try:
            call(*args)
        except BaseException:
            if self.state.step > saved:
                log.info("stopping at step %d: saving a checkpoint to resume from", self.state.step)
                self._checkpoint()
            raise

    def _batches(self, start: int) -> Iterator[LoadedStep]:
        """The loaded micro-batches of the remaining steps, in order."""
        cfg, accum = self.cfg, self.cfg.schedule.grad_accumulation
        loader = make_loader(StepDataset(self.data.records, self.data.sia, self.data.cache, self.data.losers),
                             self.data.sampler,
                             (cfg.schedule.max_steps - start) * accum, cfg.data.num_workers)
        sizes = sorted({b.batch_size for b in self.data.sampler.buckets})
        log.info("global batch = per-rank batch (%s, by bucket) x %d process(es) x %d accumulation; steps %d -> %d",
                 "/".join(map(str, sizes)), self.world, accum, start, cfg.schedule.max_steps)
        return iter(loader)

    def _train_step(self, batches: Iterator[LoadedStep]) -> tuple[float, float]:
        """One optimizer step over ``grad_accumulation`` micro-batches; returns (mean loss over ranks, grad norm)."""
        accum, losses = self.cfg.schedule.grad_accumulation, []
        for k in range(accum):
            loaded = next(batches)
            loaded.add_skips_to(self.state.skips)
            micro, sync = self.state.step * accum + k, k == accum - 1
            if isinstance(loaded.batch, PairPixelBatch):
                losses.append(self._dpo_micro_step(*self._to_pair_batches(loaded.batch), micro, sync))
            elif self.old is not None:
                losses.append(self._nft_micro_step(self._to_train_batch(loaded.batch), micro, sync))
            else:
                losses.append(self._micro_step(self._to_train_batch(loaded.batch), micro, sync))
        norm = self._optimizer_step()
        self.state.step += 1
        return float(self.acc.reduce(torch.stack(losses).mean(), reduction="mean")), norm

    def _log(self, metrics: MetricsLog | None, tb: TensorBoardLogger | None, step: int, window: list[float],
             grad_norm: float) -> None:
        values = {"loss": sum(window) / len(window), "lr": self.lr_schedule.get_last_lr()[0], "grad_norm": grad_norm,
                  "skipped": self.state.skips.total}
        for prefix, bins in (("loss_by_t", self.state.bins), ("rollout_loss_by_t", self.state.rollout_bins)):
            bins.sums, bins.counts = self.acc.reduce(bins.sums.to(self.device), "sum").cpu(), \
                self.acc.reduce(bins.counts.to(self.device), "sum").cpu()
            values.update(bins.scalars(prefix))
            bins.reset()
        values.update(self._term_scalars())
        if self.consistency is not None:
            values.update(self.consistency.scalars(lambda t: self.acc.reduce(t.to(self.device), "sum")))
        self._last_loss = values["loss"]
        if metrics is not None:
            metrics.write(step, **values)
        if tb is not None:
            tb.scalars(step, values)
        log.info("step %d: loss %.5f, lr %.3g, grad norm %.3g", step, values["loss"], values["lr"], grad_norm)

    def _term_scalars(self) -> dict[str, float]:
        """Means of the DPO / NFT terms over the window's micro-steps and the ranks (empty for flow runs)."""
        names = TERM_METRICS.get(self.cfg.objective.kind)
        if names is None:
            return {}
        window, self._terms_window = self._terms_window, []
        sums = torch.tensor([[sum(w[n] for w in window) for n in names] + [len(window)]], dtype=torch.float64)
        sums = self.acc.reduce(sums.to(self.device), "sum").cpu()[0]
        count = float(sums[-1])
        return {n: float(sums[i]) / count if count else float("nan") for i, n in enumerate(names)}

    def _checkpoint(self) -> Path | None:
        # every rank: a sharded model is gathered by all of them; only the main process writes
        path = save_run_state(self.cfg.checkpoint_dir, self.state, transformer=self.transformer,
                              lora=self.cfg.is_lora, optimizer=self.optimizer, lr_schedule=self.lr_schedule,
                              ema=self.ema, grad_accumulation=self.cfg.schedule.grad_accumulation,
                              keep_last=self.cfg.checkpoint.keep_last, is_main=self.is_main, old_policy=self.old)
        self.acc.wait_for_everyone()
        return path

    def _validate(self, metrics: MetricsLog | None, tb: TensorBoardLogger | None, step: int,
                  val_losses: list[tuple[int, float]]) -> Any:
        """Held-out loss and sample grid on the main process (sharded: computed by every rank in step); the other
        ranks wait. Returns the grid or None."""
        grid = None
        if self.validator is not None:
            result = self.validator.run(step, self.transformer)
            value, grid = (result.loss, result.grid) if self.is_main else (None, None)
            if grid is not None:
                (self.out / "samples").mkdir(parents=True, exist_ok=True)
                save_image(grid, self.out / "samples" / f"step-{step:06d}.png", overwrite=True)
                if tb is not None:
                    tb.image("samples", grid, step)
            if value is not None:
                val_losses.append((step, value))
                per_task = {f"val_loss/{task}": loss for task, loss in result.by_task.items()}
                if metrics is not None:
                    metrics.write(step, val_loss=value, **per_task)
                if tb is not None:
                    tb.scalars(step, {"val_loss": value, **per_task})
        self.acc.wait_for_everyone()
        return grid

    def _finish(self, metrics: MetricsLog | None, tb: TensorBoardLogger | None) -> list[Path]:
        exported: list[Path] = []
        transformer, ema_state = self._whole_weights()
        if self.is_main:
            info = {"stage": self.cfg.stage, "step": self.state.step, "source": self.comps.source}
            exported = export_run(transformer, self.out, lora=self.cfg.is_lora, save_format=self.cfg.lora.save_format,
                                  ema_state=ema_state, info=info)
            if metrics is not None:
                metrics.close()
                if self.cfg.logging.loss_curve:
                    self._loss_curve()
            if tb is not None:
                tb.close()
        self.acc.wait_for_everyone()
        return exported

    def _whole_weights(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
        """The transformer and EMA shadow to export; sharded ones are gathered (every rank) onto the main process."""
        ema = None if self.ema is None else dict(self.ema.shadow)
        if not self.sharded:
            return self.transformer, ema
        local, total = shard_numel(self.transformer)
        log.info("fsdp shard rank=%d local=%d total=%d after %d steps", self.rank, local, total, self.state.step)
        state = gather_full(self.transformer.state_dict(), keep=self.is_main)
        ema = gather_full(ema, keep=self.is_main)
        if not self.is_main:
            return self.transformer, None
        assert self.skeleton is not None  # made on the main process of every FSDP launch
        return materialize(self.skeleton, state), ema

    @staticmethod
    def _close(metrics: MetricsLog | None, tb: TensorBoardLogger | None) -> None:
        """Release the run's log files when it stops early (an error or a cancel)."""
        if metrics is not None:
            metrics.close()
        if tb is not None:
            tb.close()

    def _loss_curve(self) -> None:
        records = read_metrics(self.out / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        if train:
            save_loss_curve(self.out / "loss_curve.png", [s for s, _ in train], [v for _, v in train],
                            val=([s for s, _ in val], [v for _, v in val]) if val else None,
                            title=f"{self.cfg.stage}: training loss")
