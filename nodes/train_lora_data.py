"""The training pairs of FireRed Train LoRA: a pairs folder, or IMAGE batches with instructions.

* A folder in the trainer's folder layout (docs/DATA_FORMAT.md: ``x.png`` + ``x_target.png`` + ``x.txt``, several
  sources as ``x_0.png``, ``x_1.png``...; subfolders are tasks). An absolute path, or one relative to ComfyUI's
  input folder. Broken pairs are skipped and counted by the trainer's reader; none usable is an error.
* IMAGE inputs: ``source_images`` and ``target_images`` of one batch size B, pair ``i`` being item ``i`` of each,
  and ``instructions`` with one line per pair or one line for all. They are written as PNG pairs into a temporary
  folder (the trainer reads folders; its data pipeline, buckets and resume state then work unchanged), deleted
  when the node finishes.

``TrainingData.fingerprint`` identifies the data for the resume check: the folder's path and sample list, or a
digest of the pixels and instructions.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import comfy_bridge
from .common import FireRedNodeError, require_image, tensor_to_pils

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """A pairs folder the trainer can read, and what is known about it."""

    folder: Path
    samples: int
    skipped: dict[str, int]  # reason -> count of broken pairs left out
    source_counts: dict[int, int]  # number of source images -> samples with that many
    fingerprint: str

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


@contextlib.contextmanager
def training_data(data_folder: Any, source_images: Any, target_images: Any,
                  instructions: Any) -> Iterator[TrainingData]:
    """The pairs of the node's inputs (see the module docstring); a temporary folder is removed afterwards."""
    folder_given = isinstance(data_folder, str) and bool(data_folder.strip())
    images_given = source_images is not None or target_images is not None
    if folder_given and images_given:
        raise FireRedNodeError("give the training pairs either as data_folder or as source_images + "
                               "target_images, not both (clear data_folder to train on the images)")
    if not folder_given and not images_given:
        raise FireRedNodeError("no training data: set data_folder to a folder of edit pairs, or connect "
                               "source_images and target_images")
    if folder_given:
        yield _scan(_folder_path(data_folder.strip()), "data_folder")
        return
    pairs = _image_pairs(source_images, target_images, instructions)
    folder = Path(tempfile.mkdtemp(prefix="firered-lora-pairs-"))
    try:
        digest = hashlib.sha256()
        for i, (source, target, text) in enumerate(pairs):
            source.save(folder / f"pair{i:05d}.png")
            target.save(folder / f"pair{i:05d}_target.png")
            (folder / f"pair{i:05d}.txt").write_text(text, encoding="utf-8")
            for part in (source.tobytes(), target.tobytes(), text.encode("utf-8")):
                digest.update(len(part).to_bytes(8, "little") + part)
        data = _scan(folder, "the connected images")
        yield TrainingData(data.folder, data.samples, data.skipped, data.source_counts,
                           f"images:{digest.hexdigest()[:16]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _folder_path(text: str) -> Path:
    if "\x00" in text:
        raise FireRedNodeError("data_folder contains a NUL byte")
    path = Path(text).expanduser()
    if not path.is_absolute():
        folder_paths = comfy_bridge.comfy_module("folder_paths")
        input_dir = getattr(folder_paths, "get_input_directory", None)
        if input_dir is None:
            raise FireRedNodeError(f"data_folder {text!r} is not an absolute path (outside ComfyUI there is no "
                                   "input folder to resolve it against)")
        if ".." in Path(text).parts:
            raise FireRedNodeError(f"data_folder {text!r}: relative paths may not contain '..' parts")
        path = Path(input_dir()) / path
    if not path.exists():
        raise FireRedNodeError(f"data_folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise FireRedNodeError(f"data_folder {str(path)!r} is not a folder")
    return path


def _scan(folder: Path, what: str) -> TrainingData:
    """List the usable pairs of ``folder`` with the trainer's own reader."""
    from firered_train.data.skips import SkipLog
    from firered_train.data.records import read_records

    skips = SkipLog()
    try:
        records = read_records("folder", str(folder), skips=skips)
    except (OSError, ValueError) as exc:
        raise FireRedNodeError(f"{what}: {exc}") from exc
    skipped = dict(sorted(skips.counts.items()))
    if not records:
        detail = (f"all {skips.total} pairs found are broken ("
                  + ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items()) + ")"
                  if skips.total else "it holds no pairs (x.png + x_target.png + x.txt)")
        raise FireRedNodeError(f"{what} {str(folder)!r} has no usable training pair: {detail}; see "
                               "docs/DATA_FORMAT.md for the layout")
    if skips.total:
        log.warning("training data %s: %d usable pairs, %d broken ones skipped %s", folder, len(records),
                    skips.total, skipped)
    counts = Counter(len(r.sources) for r in records)
    listing = hashlib.sha256("\n".join(r.id for r in records).encode("utf-8")).hexdigest()[:16]
    return TrainingData(folder, len(records), skipped, dict(sorted(counts.items())),
                        f"folder:{os.path.abspath(folder)}:{len(records)}:{listing}")


def _image_pairs(source_images: Any, target_images: Any, instructions: Any) -> list[tuple[Any, Any, str]]:
    """(source PIL, target PIL, instruction) per pair of the IMAGE inputs, all checked before anything is written."""
    if source_images is None or target_images is None:
        missing = "source_images" if source_images is None else "target_images"
        raise FireRedNodeError(f"{missing} is not connected: training on images needs both source_images and "
                               "target_images (pair i = item i of each batch)")
    require_image(source_images, "source_images")
    require_image(target_images, "target_images")
    count, targets = int(source_images.shape[0]), int(target_images.shape[0])
    if count != targets:
        raise FireRedNodeError(f"source_images has {count} images but target_images has {targets}: pair i is item i "
                               "of each batch, so the batch sizes must match")
    lines = [line.strip() for line in instructions.splitlines()] if isinstance(instructions, str) else []
    lines = [line for line in lines if line]
    if not lines:
        raise FireRedNodeError("instructions is empty: write the edit each pair shows, one line per pair or one "
                               "line for all (e.g. 'make the sky purple')")
    if len(lines) not in (1, count):
        raise FireRedNodeError(f"instructions has {len(lines)} lines for {count} pairs: give one line per pair or "
                               "a single line for all")
    texts = lines * count if len(lines) == 1 else lines
    return list(zip(tensor_to_pils(source_images, "source_images"), tensor_to_pils(target_images, "target_images"),
                    texts))
