"""JSONL manifests with FireRed's field names.

One JSON object per line::

    {"source_image": "img/001.png", "target_image": "img/001_edit.png",
     "instruction": "Change the sky to sunset.", "instruction_cn": "把天空改成日落。",
     "inverse_instruction": "...", "inverse_instruction_cn": "...", "task": "adjust", "id": "001"}

- ``source_image``: a path, a list of paths (multi-image edit, in order) or null / missing / ``[]`` (text-to-image).
- ``target_image``: a path (``edit_image``, the name FireRed's embedding step writes, is accepted too).
- ``instruction`` / ``instruction_cn``: at least one must be non-empty; the inverse texts are optional.
- ``task``: the data-weight and bucket group (default: ``JsonlConfig.default_task``).
- ``id``: names the sample in logs (default: ``<manifest file name>:<line number>``).
- ``target_image_size`` (or ``edit_image_size``) ``{"width": W, "height": H}`` and ``source_image_size`` (a list of
  those): optional; when present they are trusted and the image headers are not read, which makes scanning a
  large manifest cheap. Files are still checked to exist; a wrong size is caught when the image is decoded
  (``ImageRef.open``) and that sample is skipped then.
- ``target_landmarks``: optional, the faces of the target for the SFT stage's consistency loss: a list with one
  entry per face, each a list of 2, 3 or 5 ``[x, y]`` points (eye on the image's left, other eye, nose tip, left
  and right mouth corner) in the target's upright pixels (docs/DATA_FORMAT.md); ``[]`` = no face.

Relative paths are relative to the manifest's folder; absolute paths are kept. URLs are refused (a skipped sample):
nothing downloads at training time. Blank lines are ignored; a line that is not a JSON object is a skipped sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ..record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..skips import SkipLog

T = TypeVar("T")

log = logging.getLogger(__name__)

_TEXT_FIELDS = ("instruction", "instruction_cn", "inverse_instruction", "inverse_instruction_cn")


@dataclass(frozen=True)
class JsonlConfig:
    """How JSONL manifests are read."""

    default_task: str = "default"  # task of lines without a "task" field


def _text(row: Mapping[str, Any], key: str, sid: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadSampleError(SkipReason.MALFORMED, sid, f"{key} must be a string, got {type(value).__name__}")
    return value.strip()


def _paths(value: Any, key: str, sid: str) -> list[str]:
    """Normalise a path field that may be null, a string or a list of strings."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise BadSampleError(SkipReason.MALFORMED, sid, f"{key} must be a path or a list of paths")
    return [v for v in items if v.strip()]  # FireRed's manifests use "" for "no image"


def _size(value: Any, key: str, sid: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = int(value["width"]), int(value["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadSampleError(SkipReason.MALFORMED, sid, f"{key} must be {{'width': W, 'height': H}}") from exc
    if width <= 0 or height <= 0:
        raise BadSampleError(SkipReason.MALFORMED, sid, f"{key} must be positive, got {width}x{height}")
    return width, height


def _landmarks(value: Any, sid: str) -> tuple[tuple[tuple[float, float], ...], ...]:
    """``target_landmarks``: null / missing / a list of faces, each a list of ``[x, y]`` number pairs."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(face, list) for face in value):
        raise BadSampleError(SkipReason.MALFORMED, sid, "target_landmarks must be a list of faces, each a list of "
                                                        "[x, y] points")
    faces = []
    for n, face in enumerate(value):
        if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                               for c in p) for p in face):
            raise BadSampleError(SkipReason.MALFORMED, sid, f"target_landmarks[{n}] must list [x, y] number pairs, "
                                                            f"got {face!r}")
        faces.append(tuple((float(p[0]), float(p[1])) for p in face))
    return tuple(faces)


def _image(base: Path, rel: str, size: tuple[int, int] | None, sid: str) -> ImageRef:
    if "://" in rel:
        raise BadSampleError(SkipReason.MISSING_FILE, sid, f"URLs are not downloaded: {rel}")
    path = base / rel  # an absolute rel replaces base
    if size is None:
        return ImageRef.probe(path, sid)
    if not path.is_file():
        raise BadSampleError(SkipReason.MISSING_FILE, sid, f"no such file: {path}")
    return ImageRef(size[0], size[1], path=path, name=str(path))


def record_from_row(row: Any, base: Path, default_id: str, config: JsonlConfig = JsonlConfig()) -> EditRecord:
    """Build and validate the record of one manifest line (already parsed); raises ``BadSampleError``."""
    if not isinstance(row, dict):
        raise BadSampleError(SkipReason.MALFORMED, default_id, "a manifest line must be a JSON object")
    sid = str(row.get("id") or default_id)
    target_rel = row.get("target_image", row.get("edit_image"))
    if not isinstance(target_rel, str) or not target_rel.strip():
        raise BadSampleError(SkipReason.MALFORMED, sid, "target_image is missing")
    source_rels = _paths(row.get("source_image"), "source_image", sid)
    source_sizes = row.get("source_image_size") or [None] * len(source_rels)
    if not isinstance(source_sizes, list) or len(source_sizes) != len(source_rels):
        raise BadSampleError(SkipReason.MALFORMED, sid, "source_image_size must list one size per source image")
    target_size = _size(row.get("target_image_size", row.get("edit_image_size")), "target_image_size", sid)
    sources = tuple(_image(base, rel, _size(size, "source_image_size", sid), sid)
                    for rel, size in zip(source_rels, source_sizes))
    texts = {key: _text(row, key, sid) for key in _TEXT_FIELDS}
    task = row.get("task") or config.default_task
    if not isinstance(task, str):
        raise BadSampleError(SkipReason.MALFORMED, sid, "task must be a string")
    target = _image(base, target_rel, target_size, sid)
    landmarks = _landmarks(row.get("target_landmarks"), sid)
    return EditRecord(id=sid, target=target, sources=sources, task=task, target_landmarks=landmarks,
                      **texts).validate()


def manifest_paths(path: str | Path) -> list[Path]:
    """``path`` itself, or every ``*.jsonl`` in it (sorted) when it is a folder: the manifests a data path names."""
    root = Path(path).expanduser()
    return sorted(root.glob("*.jsonl")) if root.is_dir() else [root]


def read_manifest_lines(manifests: str | Path | Iterable[str | Path], parse: Callable[[Any, Path, str], T],
                        skips: SkipLog, what: str = "manifest") -> tuple[list[T], int]:
    """``parse(row, manifest folder, "name:line")`` of every non-empty line of one or more JSONL manifests, in file
    then line order; a line that is not JSON or that ``parse`` refuses (``BadSampleError``) is counted in ``skips``.
    Returns the parsed values and the number of manifests."""
    paths = [Path(manifests)] if isinstance(manifests, (str, Path)) else [Path(m) for m in manifests]
    parsed: list[T] = []
    for manifest in paths:
        if not manifest.is_file():
            raise FileNotFoundError(f"{what} {manifest} does not exist")
        with manifest.open(encoding="utf-8-sig") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{manifest.name}:{number}"
                try:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise BadSampleError(SkipReason.MALFORMED, where, f"not JSON: {exc}") from exc
                    parsed.append(parse(row, manifest.parent, where))
                except BadSampleError as exc:
                    skips.add(exc)
    return parsed, len(paths)


def read_jsonl(manifests: str | Path | Iterable[str | Path], config: JsonlConfig = JsonlConfig(),
               skips: SkipLog | None = None) -> list[EditRecord]:
    """All good samples of one or more manifests, in file then line order; bad lines are counted in ``skips``."""
    skips = skips if skips is not None else SkipLog()
    records, count = read_manifest_lines(manifests, lambda row, base, where: record_from_row(row, base, where, config),
                                         skips)
    log.info("read %d samples from %d manifest(s) (%d skipped)", len(records), count, skips.total)
    return records
