"""Run the real ``firered edit`` command (``python -m firered_core edit``) on one picture and read back what it
wrote: the PNG's ``firered`` metadata and its pixels. Shared by the tests of the command's switches:
``edit_with_each(sample, folder, flags, key)`` edits a generated sample once per flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def edit_with(source: Path, instruction: str, out: Path, *flags: str, steps: int = 8) -> tuple[dict[str, Any],
                                                                                               np.ndarray]:
    """Edit ``source`` into ``out`` with the embedded model and ``flags``; (metadata, RGB pixels) of the result."""
    done = subprocess.run([sys.executable, "-m", "firered_core", "edit", str(source), "--instruction", instruction,
                           "--steps", str(steps), "-o", str(out), *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    image = Image.open(out)
    return json.loads(image.info["firered"]), np.asarray(image.convert("RGB"))


def edit_with_each(sample: Any, folder: Path, flags: Sequence[str], key: str) -> dict[str, tuple[Any, np.ndarray]]:
    """Picture 1 of a generated ``sample`` edited once per flag: flag -> (metadata[``key``], RGB pixels)."""
    source = folder / "in.png"
    sample.sources[0].save(source)
    seen = {}
    for flag in flags:
        meta, pixels = edit_with(source, sample.instruction, folder / f"{flag.strip('-')}.png", flag)
        seen[flag] = (meta[key], pixels)
    return seen
