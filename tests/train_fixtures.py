"""Synthetic edit pairs and tiny-run configs for the training tests.

The task is learnable and cheap: a coloured square on a plain background turns from red into blue or green, and
the instruction says which ("make the red square blue"). Sizes fit the 'tiny' preset (64 px, 8 px per token).

::

    make_pairs(tmp / "train", 12)                          # p000.png + p000_target.png + p000.txt, ...
    make_pairs(tmp / "wide", 8, size=(64, 32), prefix="w") # a second aspect bucket
    overrides = tiny_overrides(tmp, steps=20)              # --a.b=value list for tiny_sft / tiny_lora
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COLORS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}


def make_pairs(folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (64, 64), prefix: str = "p") -> Path:
    """``n`` colour-swap pairs in the hand-made folder layout; returns ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(n):
        background = rng.integers(90, 170, size=3)
        side = int(rng.integers(min(width, height) // 4, min(width, height) // 2 + 1))
        x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        colour = ("blue", "green")[i % 2]
        source = np.empty((height, width, 3), np.uint8)
        source[:] = background
        target = source.copy()
        source[y0:y0 + side, x0:x0 + side] = COLORS["red"]
        target[y0:y0 + side, x0:x0 + side] = COLORS[colour]
        name = f"{prefix}{i:03d}"
        Image.fromarray(source).save(folder / f"{name}.png")
        Image.fromarray(target).save(folder / f"{name}_target.png")
        (folder / f"{name}.txt").write_text(f"make the red square {colour}", encoding="utf-8")
    return folder


def tiny_overrides(root: Path, *, steps: int, cache: bool = True, val: bool = True,
                   extra: Sequence[str] = ()) -> list[str]:
    """Overrides that point a tiny config at ``root/train`` (+ ``root/val``, ``root/cache``) and ``root/run``."""
    out = [f"--data.path={root / 'train'}", f"--output_dir={root / 'run'}", f"--schedule.max_steps={steps}",
           "--data.num_workers=0", "--logging.progress_bar=false", "--logging.tensorboard=false"]
    if val:
        out.append(f"--data.val_path={root / 'val'}")
    if cache:
        out.append(f"--data.cache_dir={root / 'cache'}")
    return out + list(extra)


def cli_env(threads: int = 1) -> dict[str, str]:
    """Environment for a training subprocess: offline, fixed thread count, this checkout importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cli(*args: str) -> list[str]:
    """The command line of ``firered <args>`` through the training commands' own entry module."""
    return [sys.executable, "-m", "firered_train.cli", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for accelerate's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_tensors(path: Path) -> dict:
    """Every tensor of a safetensors file, by key (read without pickle)."""
    from firered_core.loading import open_weights

    with open_weights(path) as src:
        return {k: src.get(k) for k in src.keys()}
