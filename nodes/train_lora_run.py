"""One FireRed Train LoRA job: the node's values as a trainer config, the run with ComfyUI progress, the outputs.

The config is the shipped ``lora`` stage (``train/configs/lora.yaml``: AdamW with the report's betas, weight decay
and clipping, the outlier mask, logit-normal timesteps with the resolution shift, text drop 5 %) with the node's
values laid over it and these choices for running inside ComfyUI:

* the model is the FIRERED_MODEL's own transformer, VAE and condition encoder (with the LoRAs stacked on it),
  trained in place through ``firered_train.loop.in_process`` (adapters only; the shared weights are handed back
  unchanged);
* no DataLoader worker processes (forking ComfyUI's server is not safe), no TensorBoard, no tqdm bar;
* every number of source images the data holds is drawn in proportion to its samples;
* ``batch_size`` pairs per step exactly (the token budget is set so that it never binds first);
* bf16 autocast where ComfyUI computes in bf16, float32 elsewhere;
* one validation sample (the first pair) drawn before training, every ``preview_every`` steps and at the end:
  the progress preview and the ``preview`` output. Metrics are logged every step: the ``loss_curve`` output.

Progress: ComfyUI's bar advances per optimizer step, with the validation grid as the preview image whenever one
is drawn, and the node's progress text shows step, loss and learning rate. The interrupt button is polled before
every step; the trainer then checkpoints what it trained since the last checkpoint and stops (no LoRA file).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import comfy_bridge
from .common import FireRedNodeError, node_errors, pils_to_tensor
from .model_handle import FireRedModel
from .train_lora_data import TrainingData
from .train_lora_files import LoraTarget

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from firered_core.pipeline import FireRedEditPipeline
    from firered_train.config import TrainConfig
    from firered_train.loop.trainer import StepReport

log = logging.getLogger(__name__)

LR_SCHEDULES = ("constant", "cosine", "linear")
MAX_SEED = 2**63 - 1
MAX_STEPS = 1_000_000
MAX_PREVIEW_STEPS = 200
CURVE_SIZE = (768, 432)


@dataclass(frozen=True)
class LoraSettings:
    """The node's training values, checked."""

    steps: int
    learning_rate: float
    rank: int
    alpha: float
    resolution: int  # images are scaled to about resolution x resolution pixels (aspect kept)
    batch_size: int
    seed: int
    lr_schedule: str
    warmup_steps: int
    checkpoint_every: int
    preview_every: int  # 0: only before training and at the end
    preview_steps: int  # sampling steps of a preview

    @classmethod
    def from_inputs(cls, steps: Any, learning_rate: Any, rank: Any, alpha: Any, resolution: Any, batch_size: Any,
                    seed: Any, lr_schedule: Any, warmup_steps: Any, checkpoint_every: Any,
                    preview_every: Any, preview_steps: Any) -> "LoraSettings":
        if lr_schedule not in LR_SCHEDULES:
            raise FireRedNodeError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        steps = _integer(steps, "steps", 1, MAX_STEPS)
        warmup = _integer(warmup_steps, "warmup_steps", 0, MAX_STEPS)
        if warmup > steps:
            raise FireRedNodeError(f"warmup_steps ({warmup}) exceeds steps ({steps})")
        return cls(steps=steps, learning_rate=_positive(learning_rate, "learning_rate", 1.0),
                   rank=_integer(rank, "rank", 1, 1024), alpha=_positive(alpha, "alpha", 1e6),
                   resolution=_integer(resolution, "resolution", 32, 8192),
                   batch_size=_integer(batch_size, "batch_size", 1, 1024), seed=_integer(seed, "seed", 0, MAX_SEED),
                   lr_schedule=lr_schedule, warmup_steps=warmup,
                   checkpoint_every=_integer(checkpoint_every, "checkpoint_every", 1, MAX_STEPS),
                   preview_every=_integer(preview_every, "preview_every", 0, MAX_STEPS),
                   preview_steps=_integer(preview_steps, "preview_steps", 1, MAX_PREVIEW_STEPS))

    def trajectory(self) -> dict[str, Any]:
        """The values a resumed run must share with the run it continues (steps may grow)."""
        values = asdict(self)
        for free in ("steps", "checkpoint_every", "preview_every", "preview_steps"):
            values.pop(free)
        return values


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FireRedNodeError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _positive(value: Any, name: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= high:
        raise FireRedNodeError(f"{name} must be a number in (0, {high:g}], got {value!r}")
    return float(value)


def run_settings(model: FireRedModel, data: TrainingData, settings: LoraSettings) -> dict[str, Any]:
    """What identifies the run for ``resume``: the trajectory settings, the base model and the data."""
    return {**settings.trajectory(), "model": model.label,
            "model_loras": [f"{Path(spec.path).name}@{spec.strength:g}" for spec in model.loras],
            "data": data.fingerprint}


# ---------------------------------------------------------------------------------------------------------------
# the trainer config
# ---------------------------------------------------------------------------------------------------------------


def build_config(settings: LoraSettings, data: TrainingData, run_dir: Path, pipeline: "FireRedEditPipeline",
                 resume: bool) -> "TrainConfig":
    """The ``lora`` stage config with the node's values (see the module docstring)."""
    from firered_train.config import config_from_dict, find_config, read_yaml_tree

    tree = read_yaml_tree(find_config("lora"))
    per_token = int(pipeline.vae.spatial_compression) * int(pipeline.transformer.config.patch_size)
    area = settings.resolution**2
    slots = 1 + max(data.source_counts)  # images per sample at most
    precision = "bf16" if str(comfy_bridge.default_dtype()) == "torch.bfloat16" else "fp32"
    tree.update(stage="comfyui_lora", seed=settings.seed, precision=precision, output_dir=str(run_dir))
    tree["model"] = {**tree["model"], "preset": _preset_of(pipeline), "weights": None, "vae_weights": None,
                     "dtype": _vae_dtype(pipeline, precision), "fp8": False, "finetune": "lora"}
    tree["lora"] = {**tree["lora"], "rank": settings.rank, "alpha": settings.alpha, "save_format": "comfyui"}
    sampler = {**tree["data"]["sampler"], "source_count_weights": {n: float(k) for n, k in data.source_counts.items()},
               "max_area": area, "pixels_per_token": per_token, "multiple": math.lcm(16, per_token),
               "token_budget": settings.batch_size * slots * 2 * math.ceil(area / per_token**2),
               "max_batch_size": settings.batch_size, "seed": settings.seed}
    tree["data"] = {**tree["data"], "reader": "folder", "path": str(data.folder), "val_path": None,
                    "cache_dir": None, "num_workers": 0, "sampler": sampler,
                    "sia": {**tree["data"].get("sia", {}), "seed": settings.seed}}
    tree["optim"] = {**tree["optim"], "lr": settings.learning_rate, "warmup_steps": settings.warmup_steps,
                     "lr_schedule": settings.lr_schedule}
    tree["schedule"] = {"max_steps": settings.steps, "grad_accumulation": 1}
    tree["checkpoint"] = {"dir": None, "every_steps": settings.checkpoint_every, "keep_last": 2,
                          "resume": "latest" if resume else None}
    tree["logging"] = {**tree["logging"], "every_steps": 1, "progress_bar": False, "tensorboard": False,
                       "validation_every": settings.preview_every or settings.steps, "n_val_samples": 1,
                       "val_sampling_steps": settings.preview_steps, "loss_curve": True}
    with node_errors("FireRed Train LoRA settings"):
        return config_from_dict(tree)


def _preset_of(pipeline: "FireRedEditPipeline") -> str:
    """The preset naming this architecture (a label in the run's config.yaml), else the released model's."""
    from firered_core.config import PRESETS

    for name, preset in PRESETS.items():
        if preset.transformer == pipeline.transformer.config:
            return name
    return "firered-1.0"


def _vae_dtype(pipeline: "FireRedEditPipeline", precision: str) -> str:
    """``model.dtype``: the trainer feeds the VAE pixels in this dtype, so it follows the VAE's weights."""
    import torch

    from firered_core.placement import compute_dtype

    dtype = compute_dtype(pipeline.vae)
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    name = names.get(dtype, "float32")
    return "float32" if name == "float16" and precision == "bf16" else name


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------


class _Progress:
    """ComfyUI's progress bar, preview and progress text for the trainer's ``on_step``."""

    def __init__(self, total: int, node_id: str | None, skipped: int) -> None:
        self.node_id, self.skipped = node_id, skipped
        self.update = comfy_bridge.progress_with_preview(total)
        self.last_preview: "Image.Image | None" = None

    def __call__(self, report: "StepReport") -> None:
        if report.preview is not None:
            self.last_preview = report.preview
        if self.update is not None:
            self.update(report.step, report.preview)
        note = f" · {self.skipped} broken pairs skipped" if self.skipped else ""
        comfy_bridge.progress_text(f"step {report.step}/{report.total} · loss {report.loss:.4f} · "
                                   f"lr {report.lr:.2e}{note}", self.node_id)


def run_training(model: FireRedModel, data: TrainingData, target: LoraTarget, settings: LoraSettings,
                 resume: bool, node_id: str | None = None) -> tuple[str, "torch.Tensor", "torch.Tensor"]:
    """Train, publish the LoRA, and return (LoRA path, loss curve IMAGE, preview IMAGE)."""
    from firered_train.loop.in_process import train_lora_in_process
    from firered_train.model.components import TrainComponents

    identity = run_settings(model, data, settings)
    start = target.prepare_run(identity, settings.steps, resume)
    with node_errors("FireRed Train LoRA"):
        pipeline = model.prepare(training=True)
    cfg = build_config(settings, data, target.run_dir, pipeline, resume)
    comps = TrainComponents(pipeline.transformer, pipeline.vae, pipeline.encoder, pipeline.scheduler_config,
                            source=model.label)
    progress = _Progress(settings.steps, node_id, data.skipped_total)
    log.info("FireRed Train LoRA: %s, %d pairs, steps %d -> %d", target.name, data.samples, start, settings.steps)
    target.start(identity, resume)
    try:
        with node_errors("FireRed Train LoRA"):
            result = train_lora_in_process(cfg, comps, on_step=progress, cancel=comfy_bridge.cancel_hook())
    except BaseException:
        target.discard_if_unsaved(resume)
        raise
    exported = next((p for p in result.exported if p.name == "lora.safetensors"), None)
    if exported is None:
        raise FireRedNodeError(f"training ended without exporting a LoRA in {str(target.run_dir)!r}")
    target.check_free()
    path = target.publish(exported)
    return str(path), loss_curve(target.run_dir, target.name), preview(progress.last_preview, target.run_dir)


def loss_curve(run_dir: Path, name: str) -> "torch.Tensor":
    """The run's training (and held-out) loss over steps as an IMAGE ``[1, H, W, 3]``."""
    from firered_train.observe import draw_loss_curve, read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train:
        raise FireRedNodeError(f"no training loss was logged in {str(run_dir)!r}")
    image = draw_loss_curve([s for s, _ in train], [v for _, v in train], size=CURVE_SIZE,
                            title=f"{name}: training loss",
                            val=([s for s, _ in val], [v for _, v in val]) if val else None)
    return pils_to_tensor([image])


def preview(grid: "Image.Image | None", run_dir: Path) -> "torch.Tensor":
    """The last validation grid (source | result | target) as an IMAGE ``[1, H, W, 3]``: this call's, else the
    run's newest saved one (a resume that only exports), else grey."""
    from PIL import Image

    if grid is None:
        saved = sorted((run_dir / "samples").glob("step-*.png"))
        if saved:
            with Image.open(saved[-1]) as image:
                grid = image.convert("RGB")
    return pils_to_tensor([grid.convert("RGB") if grid is not None else Image.new("RGB", (256, 256), (128,) * 3)])
