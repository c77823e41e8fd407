"""A folder of edit pairs that a person can make by hand.

Naming (``x`` is any sample name; image files may be .png, .jpg, .jpeg, .webp or .bmp)::

    x_target.png     the edited result                                   (required: it defines sample "x")
    x.png            the single source image                             (edit with one input)
    x_0.png, x_1.png ... the sources of a multi-image edit, in order     (instead of x.png; numbered from 0)
    x.txt            the instruction in English                          (x.txt and/or x.cn.txt, not empty)
    x.cn.txt         the instruction in Chinese
    x.inverse.txt, x.inverse.cn.txt  optional inverse instructions (only with exactly one source)

A sample with no source file is text-to-image (``x_target.png`` + ``x.txt``). The task label is the name of the
first folder below the root (``root/add/x_target.png`` -> task "add"); files directly in the root get
``default_task``. The sample id is the path of ``x`` relative to the root, e.g. ``add/x``.

Rules that settle the corner cases:

- ``x_0.png`` belongs to sample ``x_0`` if ``x_0_target.png`` exists, else it is source 0 of sample ``x``.
- Sources must be numbered 0, 1, 2 ... without gaps; ``x.png`` together with ``x_0.png``, or the same name with
  two extensions (``x.png`` and ``x.jpg``), is ambiguous. Such samples are skipped as malformed.
- Instruction files without a ``_target`` image (a forgotten target) are skipped as a missing file.
- Files and folders whose name starts with a dot are ignored.

Bad samples are counted in the ``SkipLog`` and left out; the scan never stops on them. Image sizes come from the
file headers; no pixels are decoded here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..record import BadSampleError, EditRecord, ImageRef, SkipReason
from ..skips import SkipLog

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TARGET_SUFFIX = "_target"
_TEXT_FILES = {  # record field -> file name suffix after the sample name
    "instruction": ".txt",
    "instruction_cn": ".cn.txt",
    "inverse_instruction": ".inverse.txt",
    "inverse_instruction_cn": ".inverse.cn.txt",
}
_NUMBERED = re.compile(r"^(?P<base>.+)_(?P<k>\d+)$")


@dataclass(frozen=True)
class FolderConfig:
    """How a hand-made folder is read."""

    default_task: str = "default"  # task of samples stored directly in the root folder


def _images_by_stem(names: list[str]) -> dict[str, list[str]]:
    """Image file names of one folder grouped by their name without extension."""
    stems: dict[str, list[str]] = {}
    for name in names:
        path = Path(name)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            stems.setdefault(path.stem, []).append(name)
    return stems


def _read_text(path: Path, sample_id: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()  # -sig: editors on Windows add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise BadSampleError(SkipReason.MALFORMED, sample_id, f"{path.name}: {exc}") from exc


def _one_image(folder: Path, names: list[str], sample_id: str) -> Path:
    if len(names) > 1:
        raise BadSampleError(SkipReason.MALFORMED, sample_id, f"ambiguous: {sorted(names)}")
    return folder / names[0]


class _FolderScan:
    """Sample discovery inside one directory (one job: apply the naming rules above)."""

    def __init__(self, folder: Path, names: list[str], id_prefix: str, task: str) -> None:
        self.folder, self.names, self.id_prefix, self.task = folder, set(names), id_prefix, task
        self.images = _images_by_stem(sorted(names))
        self.samples = sorted(s[: -len(TARGET_SUFFIX)] for s in self.images if s.endswith(TARGET_SUFFIX))
        self.sample_set = set(self.samples)
        self.numbered = self._numbered_sources()

    def _numbered_sources(self) -> dict[str, dict[int, list[str]]]:
        """sample -> {k: file names} for every ``<sample>_<k>`` image not claimed by a sample of that name."""
        found: dict[str, dict[int, list[str]]] = {}
        for stem, files in self.images.items():
            match = _NUMBERED.match(stem)
            if match and stem not in self.sample_set and match["base"] in self.sample_set:
                found.setdefault(match["base"], {})[int(match["k"])] = files
        return found

    def sample_id(self, stem: str) -> str:
        return f"{self.id_prefix}{stem}"

    def record(self, stem: str) -> EditRecord:
        sid = self.sample_id(stem)
        target = ImageRef.probe(_one_image(self.folder, self.images[stem + TARGET_SUFFIX], sid), sid)
        texts = {f: _read_text(self.folder / (stem + suffix), sid)
                 for f, suffix in _TEXT_FILES.items() if stem + suffix in self.names}
        sources = tuple(ImageRef.probe(p, sid) for p in self._source_paths(stem, sid))
        return EditRecord(id=sid, target=target, sources=sources, task=self.task, **texts).validate()

    def _source_paths(self, stem: str, sid: str) -> list[Path]:
        single = self.images.get(stem)
        numbered = self.numbered.get(stem, {})
        if single and numbered:
            raise BadSampleError(SkipReason.MALFORMED, sid, f"both {stem}.<ext> and {stem}_<k>.<ext> sources")
        if single:
            return [_one_image(self.folder, single, sid)]
        if sorted(numbered) != list(range(len(numbered))):
            raise BadSampleError(SkipReason.MALFORMED, sid, f"sources must be numbered 0..N-1: {sorted(numbered)}")
        return [_one_image(self.folder, numbered[k], sid) for k in range(len(numbered))]

    def orphans(self) -> list[str]:
        """Sample names that have instruction files but no target image."""
        stems = {n.removesuffix(".txt").removesuffix(".cn").removesuffix(".inverse")
                 for n in self.names if n.endswith(".txt")}
        return sorted(stems - self.sample_set)


def _hidden(rel: Path) -> bool:
    """Folders such as .git or .ipynb_checkpoints (and files such as macOS's ._x.png) are never data."""
    return any(part.startswith(".") for part in rel.parts)


def read_folder(root: str | Path, config: FolderConfig = FolderConfig(), skips: SkipLog | None = None,
                ) -> list[EditRecord]:
    """All good samples under ``root`` in a stable (sorted) order; bad ones are counted in ``skips``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {root} does not exist or is not a folder")
    skips = skips if skips is not None else SkipLog()
    records: list[EditRecord] = []
    folders = [p for p in root.rglob("*") if p.is_dir() and not _hidden(p.relative_to(root))]
    for folder in sorted([root, *folders]):
        rel = folder.relative_to(root)
        task = rel.parts[0] if rel.parts else config.default_task
        prefix = "" if not rel.parts else rel.as_posix() + "/"
        names = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        scan = _FolderScan(folder, names, prefix, task)
        for stem in scan.samples:
            try:
                records.append(scan.record(stem))
            except BadSampleError as exc:
                skips.add(exc)
        for stem in scan.orphans():
            skips.add(BadSampleError(SkipReason.MISSING_FILE, scan.sample_id(stem),
                                     f"instruction without {stem}{TARGET_SUFFIX}.<ext>"))
    log.info("read %d samples from %s (%d skipped)", len(records), root, skips.total)
    return records
