"""Training checkpoints: complete or absent, never half-written, never pickled.

::

    save_checkpoint("runs/x/checkpoints", step, model_state=model.state_dict(), optimizer=opt, lr_scheduler=sched,
                    ema=ema, sampler_state=sampler.state_dict(next_step=step), data_state=stream.state_dict(),
                    extra={"tokens_seen": n}, keep_last=3)
    ckpt = load_checkpoint("runs/x/checkpoints", model=model, optimizer=opt, lr_scheduler=sched, ema=ema)
    sampler.load_state_dict(ckpt.sampler); start = ckpt.step

Layout of a checkpoint root::

    step-000500/              one complete checkpoint (state after 500 optimizer steps)
        model.safetensors     full weights, or only the adapters of a LoRA run (``model_kind``)
        optimizer.safetensors the tensors of each stored state; their nesting (and all non-tensor values:
        ema.safetensors ...   param groups, scheduler counters, sampler cursors, RNG states) is in meta.json
        meta.json             written last; format, step, model kind, one JSON tree per section
    step-001000/
    latest                    the name of the newest checkpoint ("step-001000"), replaced atomically

Atomicity. A checkpoint is assembled in a hidden ``.tmp-step-...`` directory, every file fsync'd, then renamed to
``step-NNNNNN`` in one ``os.replace``: a directory with that name is complete by construction. Only then is
``latest`` rewritten (temp file + ``os.replace``), so it never names a partial checkpoint. A save killed at any
point leaves at worst a ``.tmp-*`` directory, which is ignored and deleted by the next save or load. Pruning
(``keep_last``) renames a checkpoint to ``.trash-*`` before deleting it, so a kill mid-delete cannot leave a
damaged ``step-*`` behind.

``latest`` is authoritative: a checkpoint newer than it (the process died between the rename and the pointer
update) is treated as stale, and saving over it replaces it. Saving over any other existing step raises
``FileExistsError`` unless ``replace=True`` (e.g. after deliberately resuming from an older checkpoint).

No pickle: tensors go into safetensors files and everything else into JSON (``state_codec``), so loading a
checkpoint cannot run code. One process writes a root at a time (rank 0 in distributed runs; pass every rank's
RNG states as a list, see ``rng_state``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from firered_core.loading import open_weights
from firered_core.loading.save import write_safetensors

from .rng import capture_rng_states, restore_rng_states
from .codec import decode_state, encode_state

__all__ = ["Checkpoint", "CheckpointError", "list_checkpoints", "latest_checkpoint", "load_checkpoint",
           "resolve_checkpoint", "save_checkpoint", "step_dir_name"]

log = logging.getLogger(__name__)

FORMAT = "firered-train-checkpoint"
VERSION = 1
LATEST = "latest"
META = "meta.json"
MODEL_FILE = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP, _TRASH = ".tmp-", ".trash-"
ModelKind = Literal["full", "adapter"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, from another format version, or does not fit what it is loaded into."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read. Sections that were not saved are None."""

    path: Path
    step: int
    model_kind: ModelKind
    model_state: dict[str, torch.Tensor]
    optimizer: Any = None
    lr_scheduler: Any = None
    ema: Any = None
    sampler: Any = None
    data: Any = None
    rng: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------------------------------------
# files


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=False, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f"{_TMP}{LATEST}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / LATEST)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(root)


def _remove_leftovers(root: Path) -> None:
    """Delete what killed saves and prunes left behind (hidden temp and trash entries)."""
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name.startswith((_TMP, _TRASH)):
            log.info("removing leftover of an interrupted checkpoint save: %s", entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# finding checkpoints


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint under ``root``, oldest first."""
    found = []
    for entry in Path(root).iterdir() if Path(root).is_dir() else ():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / META).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _pointer(root: Path) -> Path | None:
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    target = root / name
    if _STEP_DIR.match(name) and (target / META).is_file():
        return target
    log.warning("%s names %r, which is not a complete checkpoint: ignored", root / LATEST, name)
    return None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint ``root/latest`` names; without a usable pointer, the complete one with the highest step."""
    root = Path(root)
    target = _pointer(root)
    if target is not None:
        return target
    found = list_checkpoints(root)
    if found and (root / LATEST).exists():
        log.warning("using %s, the newest complete checkpoint in %s", found[-1][1].name, root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from: a step directory, a checkpoint root (its latest), or a root's ``latest`` file."""
    path = Path(path)
    if (path / META).is_file():
        return path
    root = path.parent if path.name == LATEST and not path.is_dir() else path
    if not root.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or checkpoint directory")
    target = latest_checkpoint(root)
    if target is None:
        raise CheckpointError(f"{root}: holds no complete checkpoint")
    return target


# ---------------------------------------------------------------------------------------------------------------
# saving


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _check_replaceable(root: Path, final: Path, step: int, replace: bool) -> None:
    """Refuse to save over an existing checkpoint unless it is stale or ``replace``; see the module docstring."""
    if not final.exists():
        return
    latest = _pointer(root)
    latest_step = int(_STEP_DIR.match(latest.name).group(1)) if latest is not None else -1  # type: ignore[union-attr]
    if not replace and step <= latest_step:
        raise FileExistsError(f"{final}: a checkpoint of step {step} already exists (latest is step {latest_step});"
                              " pass replace=True to overwrite it")
    log.warning("replacing checkpoint %s%s", final, "" if replace else " (newer than 'latest': left by a killed run)")


def _move_to_trash(root: Path, path: Path) -> Path:
    trash = root / f"{_TRASH}{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    return trash


def _prune(root: Path, keep_last: int, step: int) -> None:
    """Delete the oldest checkpoints up to ``step``, keeping ``keep_last`` (newer steps belong to another run)."""
    older = [(s, p) for s, p in list_checkpoints(root) if s <= step]
    for s, path in older[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(_move_to_trash(root, path), ignore_errors=True)
        log.info("deleted checkpoint %s (keep_last=%d)", path.name, keep_last)


def _write_contents(tmp: Path, step: int, model_state: Mapping[str, torch.Tensor], model_kind: ModelKind,
                    sections: Mapping[str, Any]) -> None:
    write_safetensors(tmp / MODEL_FILE, model_state, metadata={"format": "pt", "firered.checkpoint": model_kind})
    meta_sections: dict[str, Any] = {}
    for name, value in sections.items():
        if value is None:
            continue
        tree, tensors = encode_state(value, name)
        file = f"{name}.safetensors" if tensors else None
        if file is not None:
            write_safetensors(tmp / file, tensors, metadata={"format": "pt"})
        meta_sections[name] = {"tree": tree, "tensors": file}
    meta = {"format": FORMAT, "version": VERSION, "step": step, "model_kind": model_kind, "model_file": MODEL_FILE,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": meta_sections}
    _write_json(tmp / META, meta)  # last: its presence marks the directory complete
    for entry in tmp.iterdir():
        _fsync(entry)
    _fsync(tmp)


def save_checkpoint(root: str | os.PathLike, step: int, *, model_state: Mapping[str, torch.Tensor],
                    model_kind: ModelKind = "full", optimizer: Any = None, lr_scheduler: Any = None, ema: Any = None,
                    sampler_state: Any = None, data_state: Any = None, rng_states: Any = "capture",
                    extra: Mapping[str, Any] | None = None, keep_last: int | None = None,
                    replace: bool = False) -> Path:
    """Write the state after ``step`` optimizer steps to ``root/step-NNNNNN`` atomically; returns that directory.

    ``optimizer``, ``lr_scheduler`` and ``ema`` may be objects (their ``state_dict()`` is saved) or state dicts.
    ``rng_states``: "capture" (default) takes this process's global RNG states now; None saves none; a dict or a
    per-rank list is saved as given. ``extra`` is any JSON-like mapping (tensors allowed).
    """
    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0, got {step}")
    if model_kind not in ("full", "adapter"):
        raise ValueError(f"save_checkpoint: model_kind must be 'full' or 'adapter', got {model_kind!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    final = root / step_dir_name(step)
    sections = {"optimizer": _state_of(optimizer), "lr_scheduler": _state_of(lr_scheduler), "ema": _state_of(ema),
                "sampler": sampler_state, "data": data_state,
                "rng": capture_rng_states() if isinstance(rng_states, str) and rng_states == "capture" else rng_states,
                "extra": dict(extra) if extra else None}
    _check_replaceable(root, final, step, replace)
    tmp = root / f"{_TMP}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        _write_contents(tmp, step, model_state, model_kind, sections)
        old = _move_to_trash(root, final) if final.exists() else None
        os.replace(tmp, final)  # the commit point
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():  # the rename failed: put the replaced checkpoint back
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _write_pointer(root, final.name)
    if keep_last is not None:
        _prune(root, keep_last, step)
    log.info("saved checkpoint %s", final)
    return final


# ---------------------------------------------------------------------------------------------------------------
# loading


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_weights(path) as source:
        return {key: source.get(key) for key in source.keys()}


def _load_model(model: nn.Module, state: Mapping[str, torch.Tensor], kind: ModelKind, where: Path) -> None:
    result = model.load_state_dict(state, strict=kind == "full")
    if kind == "adapter" and result.unexpected_keys:
        raise CheckpointError(f"{where}: adapter weights fit no module of the model: {result.unexpected_keys[:5]}"
                              " (attach the same LoRA layout before loading)")


def _restore(obj: Any, state: Any, name: str, where: Path) -> None:
    if obj is None:
        return
    if state is None:
        raise CheckpointError(f"{where}: holds no {name} state to restore")
    obj.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module | None = None, optimizer: Any = None,
                    lr_scheduler: Any = None, ema: Any = None, restore_rng: bool = True, rank: int = 0,
                    clean: bool = True) -> Checkpoint:
    """Read a checkpoint (a step directory, or a root's latest) and restore what is passed in.

    ``model``, ``optimizer``, ``lr_scheduler`` and ``ema`` get ``load_state_dict``; the global RNGs are restored
    (``rank`` picks this process's entry of per-rank states). Sampler, data and extra states are returned for the
    caller to hand on. ``clean`` deletes leftovers of killed saves (leave it off on all but the writing rank).
    """
    ckpt_dir = resolve_checkpoint(path)
    if clean:
        _remove_leftovers(ckpt_dir.parent)
    meta = json.loads((ckpt_dir / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{ckpt_dir}: not a {FORMAT} v{VERSION} checkpoint "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    sections = {}
    for name, entry in meta["sections"].items():
        tensors = _read_tensors(ckpt_dir / entry["tensors"]) if entry["tensors"] else {}
        sections[name] = decode_state(entry["tree"], tensors)
    ckpt = Checkpoint(path=ckpt_dir, step=int(meta["step"]), model_kind=meta["model_kind"],
                      model_state=_read_tensors(ckpt_dir / meta["model_file"]),
                      optimizer=sections.get("optimizer"), lr_scheduler=sections.get("lr_scheduler"),
                      ema=sections.get("ema"), sampler=sections.get("sampler"), data=sections.get("data"),
                      rng=sections.get("rng"), extra=sections.get("extra") or {})
    if model is not None:
        _load_model(model, ckpt.model_state, ckpt.model_kind, ckpt_dir)
    _restore(optimizer, ckpt.optimizer, "optimizer", ckpt_dir)
    _restore(lr_scheduler, ckpt.lr_scheduler, "lr_scheduler", ckpt_dir)
    _restore(ema, ckpt.ema, "ema", ckpt_dir)
    if restore_rng and ckpt.rng is not None:
        restore_rng_states(ckpt.rng, rank)
    log.info("loaded checkpoint %s (step %d)", ckpt_dir, ckpt.step)
    return ckpt
