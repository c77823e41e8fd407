"""Writing a generated split to disk as PNGs plus a JSONL manifest that ``read_jsonl`` reads.

::

    write_dataset("data/synthetic_train", split="train", n=10_000, seed=0, size=64)

produces::

    data/synthetic_train/
      manifest.jsonl          one sample per line, train/'s JSONL field names (docs/DATA_FORMAT.md section 2)
      info.json               split, n, seed, size and the count per task
      images/<task>/<id>.src0.png, <id>.src1.png, <id>.target.png

Each manifest line also carries ``op`` and ``spec`` (the machine-readable edit the success checks read); the
training reader ignores fields it does not know. Image sizes are written too, so scanning the manifest never
opens an image.

Writes are atomic: everything goes to a hidden temporary folder next to ``out_dir`` that is renamed into place
at the end, so an interrupted run leaves no half dataset. An existing ``out_dir`` is never replaced unless
``overwrite=True``.

Public API: ``write_dataset``, ``manifest_row``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from .generator import GeneratorConfig, SyntheticSample, generate

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
INFO = "info.json"


def manifest_row(sample: SyntheticSample, source_paths: list[str], target_path: str) -> dict[str, Any]:
    """The JSONL line of one sample, with paths relative to the manifest."""
    def size(img: Any) -> dict[str, int]:
        return {"width": img.width, "height": img.height}
    return {
        "id": sample.id, "task": sample.task, "op": sample.op,
        "source_image": source_paths, "target_image": target_path,
        "source_image_size": [size(s) for s in sample.sources], "target_image_size": size(sample.target),
        "instruction": sample.instruction, "instruction_cn": sample.instruction_cn, "spec": sample.spec,
    }


def _write_samples(root: Path, samples: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    with (root / MANIFEST).open("w", encoding="utf-8") as manifest:
        for sample in samples:
            folder = root / "images" / sample.task
            folder.mkdir(parents=True, exist_ok=True)
            sources = []
            for i, img in enumerate(sample.sources):
                img.save(folder / f"{sample.id}.src{i}.png")
                sources.append(f"images/{sample.task}/{sample.id}.src{i}.png")
            sample.target.save(folder / f"{sample.id}.target.png")
            row = manifest_row(sample, sources, f"images/{sample.task}/{sample.id}.target.png")
            manifest.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[sample.task] += 1
            if sum(counts.values()) % 1000 == 0:
                log.info("wrote %d samples", sum(counts.values()))
    return counts


def write_dataset(out_dir: str | Path, split: str, n: int, seed: int = 0, size: int = 64,
                  overwrite: bool = False, config: GeneratorConfig | None = None) -> Path:
    """Generate ``n`` samples of ``split`` into ``out_dir``; returns the manifest path.

    Raises ``FileExistsError`` when ``out_dir`` exists and ``overwrite`` is false.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    config = config or GeneratorConfig()
    config = replace(config, scene=replace(config.scene, size=size))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        counts = _write_samples(tmp, generate(split, n, seed, config))
        info = {"split": split, "n": n, "seed": seed, "size": size, "holdout_modulus": config.holdout_modulus,
                "tasks": dict(sorted(counts.items()))}
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():  # overwrite: move the old one aside first so a failed rename loses nothing
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d %s samples to %s: %s", n, split, out, dict(sorted(counts.items())))
    return out / MANIFEST
