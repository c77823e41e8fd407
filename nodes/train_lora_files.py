"""Where FireRed Train LoRA writes, and the rules that keep it from writing anywhere else or over anything.

* The LoRA file: ``<loras folder>/<name>.safetensors`` (``comfy_bridge.lora_output_folder``). The name is checked
  (``lora_file_name``): no path separators, no ``..``, not absolute, not empty, no control or reserved characters,
  no leading dot, no device names (``CON``, ``NUL``...); ``.safetensors`` is added when missing. An existing file
  is replaced only with ``overwrite``; the file appears whole or not at all (copied to a hidden temporary file in
  the same folder, then renamed; without ``overwrite`` the rename refuses an existing file atomically).
* The run: ``<runs folder>/<stem>/`` (``comfy_bridge.lora_runs_folder``) holds the trainer's checkpoints, metrics,
  sample grids and ``node_settings.json``, the settings that decide the run's trajectory. ``resume`` continues
  from its newest checkpoint and is refused when the settings differ (the result would not be what an
  uninterrupted run gives) or when the run is already past ``steps`` (at ``steps`` it only exports, e.g. after a
  stop during the last step's progress report). A fresh run over a folder with
  checkpoints needs ``overwrite`` (it deletes them); a fresh run over one without checkpoints replaces it. A fresh
  run that fails or is stopped before its first checkpoint leaves no folder.

Nothing is created until ``RunFolder.start`` is called, after every input has been checked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import comfy_bridge
from .common import FireRedNodeError

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
SETTINGS_FILE = "node_settings.json"
MAX_NAME_BYTES = 200
_FORBIDDEN = set('<>:"/\\|?*')
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def lora_file_name(name: Any) -> str:
    """``name`` checked as a plain file name (see the module docstring), with ``.safetensors`` added if missing."""
    if not isinstance(name, str) or not name.strip():
        raise FireRedNodeError("lora_name is empty: name the LoRA file to write (e.g. 'my_style')")
    name = name.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise FireRedNodeError(f"lora_name {name!r} contains control characters")
    if "/" in name or "\\" in name or os.path.isabs(name):
        raise FireRedNodeError(f"lora_name {name!r} is refused: give a file name without folders; the LoRA is "
                               "written into ComfyUI's loras folder")
    if ".." in name:
        raise FireRedNodeError(f"lora_name {name!r} is refused: names may not contain '..'")
    bad = sorted(set(name) & _FORBIDDEN)
    if bad:
        raise FireRedNodeError(f"lora_name {name!r} contains characters file systems refuse: {' '.join(bad)}")
    if name.startswith(".") or name.endswith((" ", ".")):
        raise FireRedNodeError(f"lora_name {name!r} may not start with a dot or end with a dot or space")
    if not name.lower().endswith(SUFFIX):
        name += SUFFIX
    stem = name[: -len(SUFFIX)]
    if not stem.strip(" ."):
        raise FireRedNodeError(f"lora_name {name!r} has no name before {SUFFIX}")
    if stem.split(".")[0].strip().lower() in _RESERVED:
        raise FireRedNodeError(f"lora_name {name!r} is a reserved device name on Windows; choose another")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FireRedNodeError(f"lora_name is too long ({len(name.encode('utf-8'))} bytes, at most {MAX_NAME_BYTES})")
    return name


@dataclass(frozen=True)
class LoraTarget:
    """The file a run publishes and the folder it trains in."""

    name: str  # e.g. "my_style.safetensors"
    path: Path
    run_dir: Path
    overwrite: bool

    @classmethod
    def plan(cls, lora_name: Any, overwrite: bool) -> "LoraTarget":
        """Checked name and paths; refuses an existing file without ``overwrite``. Creates nothing."""
        name = lora_file_name(lora_name)
        target = cls(name, comfy_bridge.lora_output_folder() / name,
                     comfy_bridge.lora_runs_folder() / name[: -len(SUFFIX)], bool(overwrite))
        target.check_free()
        return target

    def check_free(self) -> None:
        if self.path.exists() and not self.overwrite:
            raise FireRedNodeError(f"the LoRA file {str(self.path)!r} already exists: choose another lora_name or "
                                   "turn on overwrite")

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint_step(self) -> int | None:
        """The step of the run's newest complete checkpoint, or None."""
        from firered_train.state.checkpoint import list_checkpoints

        found = list_checkpoints(self.checkpoints)
        return found[-1][0] if found else None

    def prepare_run(self, settings: Mapping[str, Any], steps: int, resume: bool) -> int:
        """Check ``resume`` against the run folder; returns the step training starts from. Creates nothing."""
        step = self.checkpoint_step()
        if resume:
            if step is None:
                raise FireRedNodeError(f"resume: run {self.run_dir.name!r} has no checkpoint in {str(self.run_dir)!r}"
                                       "; turn resume off to start it")
            changed = _changed(_read_settings(self.run_dir), settings)
            if changed:
                raise FireRedNodeError(f"resume: run {self.run_dir.name!r} was started with other settings ("
                                       f"{'; '.join(changed)}); resuming would not continue it exactly. Use the "
                                       "same settings, or turn resume off (with overwrite) to start again")
            if step > steps:
                raise FireRedNodeError(f"resume: run {self.run_dir.name!r} is already at step {step}; set steps "
                                       f"to {step} or more")
            return step
        if step is not None and not self.overwrite:
            raise FireRedNodeError(f"run {self.run_dir.name!r} has checkpoints up to step {step} in "
                                   f"{str(self.run_dir)!r}: turn on resume to continue it, or overwrite to start "
                                   "again (its checkpoints are deleted)")
        return 0

    def start(self, settings: Mapping[str, Any], resume: bool) -> None:
        """Make the run folder ready: emptied for a fresh run, the settings written."""
        if not resume and self.run_dir.exists():
            log.info("starting run %s afresh: deleting %s", self.run_dir.name, self.run_dir)
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".{SETTINGS_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(dict(settings), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.run_dir / SETTINGS_FILE)

    def discard_if_unsaved(self, resume: bool) -> None:
        """After a failed fresh run: remove its folder unless it saved a checkpoint to resume from."""
        if not resume and self.checkpoint_step() is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def publish(self, exported: Path) -> Path:
        """Copy the run's exported LoRA to ``path`` atomically (see the module docstring)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            shutil.copyfile(exported, tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            if self.overwrite:
                os.replace(tmp, self.path)
            else:
                _link_new(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("wrote LoRA %s", self.path)
        return self.path


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s file the name ``path`` unless that exists (atomically where hard links work)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FireRedNodeError(f"the LoRA file {str(path)!r} appeared while training: choose another lora_name "
                               "or turn on overwrite (the trained LoRA is kept in the run folder)") from None
    except OSError:  # no hard links on this file system
        if path.exists():
            raise FireRedNodeError(f"the LoRA file {str(path)!r} appeared while training: choose another "
                                   "lora_name or turn on overwrite") from None
        os.replace(tmp, path)


def _read_settings(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _changed(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    if not saved:
        return [f"{SETTINGS_FILE} is missing or unreadable"]
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in keys if saved.get(k) != now.get(k)]
