"""Synthetic edit pairs and tiny-run configs for the training tests.

The task is learnable and cheap: a coloured square on a plain background turns from red into blue or green, and
the instruction says which ("make the red square blue"). Sizes fit the 'tiny' preset (64 px, 8 px per token).

::

    make_pairs(tmp / "train", 12)                          # p000.png + p000_target.png + p000.txt, ...
    make_pairs(tmp / "wide", 8, size=(64, 32), prefix="w") # a second aspect bucket
    overrides = tiny_overrides(tmp, steps=20)              # --a.b=value list for tiny_sft / tiny_lora
    make_face_pairs(tmp / "faces", 8)                      # drawn faces with target_landmarks, a JSONL manifest
    save_tiny_face_features(tmp / "features.safetensors")  # a seeded tiny face-feature network for them
"""

from __future__ import annotations

import json
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


def _draw_face(image: np.ndarray, centre: tuple[float, float], size: float, rng: np.random.Generator) -> list:
    """Draws a plain face (skin disc, dark eyes, nose, mouth) into ``image [H, W, 3]``; returns its five landmarks
    ``[[x, y], ...]`` (eyes, the image's left first; nose tip; left and right mouth corner) in pixel centres."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = centre
    skin = rng.integers(150, 230, size=3)
    image[((xx - cx) / (0.5 * size)) ** 2 + ((yy - cy) / (0.62 * size)) ** 2 <= 1.0] = skin
    points = [(cx - 0.2 * size, cy - 0.12 * size), (cx + 0.2 * size, cy - 0.12 * size), (cx, cy + 0.08 * size),
              (cx - 0.16 * size, cy + 0.28 * size), (cx + 0.16 * size, cy + 0.28 * size)]
    for ex, ey in points[:2]:
        image[(xx - ex) ** 2 + (yy - ey) ** 2 <= (0.07 * size) ** 2] = (30, 25, 20)
    image[(abs(xx - cx) <= 0.03 * size) & (yy >= cy - 0.05 * size) & (yy <= points[2][1])] = skin // 2
    image[(abs(yy - points[3][1]) <= 0.03 * size) & (xx >= points[3][0]) & (xx <= points[4][0])] = (150, 40, 50)
    return [[round(x, 3), round(y, 3)] for x, y in points]


def make_face_pairs(folder: Path, n: int, *, seed: int = 0, size: int = 96, no_face_every: int = 4) -> Path:
    """``n`` one-source background-colour edits of a drawn face in ``folder/manifest.jsonl``, each target's five
    landmarks as ``target_landmarks``; every ``no_face_every``-th sample has no face (and no landmarks). The
    ``size`` x ``size`` pictures are fitted to the bucket size when loaded. Returns the manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        source = np.empty((size, size, 3), np.uint8)
        source[:] = rng.integers(90, 170, size=3)
        colour = ("blue", "green")[i % 2]
        target = np.empty_like(source)
        target[:] = COLORS[colour]
        line: dict = {"id": f"face{i:03d}", "source_image": f"f{i:03d}.png", "target_image": f"f{i:03d}_t.png",
                      "instruction": f"make the background {colour}"}
        if i % no_face_every != no_face_every - 1:
            centre = (size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size)
            face = float(rng.uniform(0.45, 0.6) * size)
            _draw_face(source, centre, face, np.random.default_rng(seed * 1000 + i))
            line["target_landmarks"] = [_draw_face(target, centre, face, np.random.default_rng(seed * 1000 + i))]
        else:
            line["instruction"] = f"make the picture {colour}"
        Image.fromarray(source).save(folder / line["source_image"])
        Image.fromarray(target).save(folder / line["target_image"])
        lines.append(line)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


TINY_FACE_SHAPE = dict(layers=(1, 1, 1, 1), widths=(4, 4, 8, 8), embedding_dim=8, crop=16)


def tiny_face_features(*, seed: int = 3):
    """A tiny IResNet (16 px crops, 8-d features) with seeded random weights and non-trivial BatchNorm statistics."""
    import torch

    from firered_train.model.face_features import FaceFeatureConfig, FaceFeatures

    torch.manual_seed(seed)
    model = FaceFeatures(FaceFeatureConfig(**TINY_FACE_SHAPE))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(1.0 + 0.2 * torch.rand_like(buf))
    return model


def save_tiny_face_features(path: Path, *, seed: int = 3) -> Path:
    """``tiny_face_features`` as the user's face-feature ``.safetensors`` file; returns ``path``."""
    from safetensors.torch import save_file

    model = tiny_face_features(seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


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


def metrics_step(path: Path) -> int:
    """The last step a run's ``metrics.jsonl`` logged (0 before the first line; a half-written line is ignored)."""
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=0)


def sigkill_after(command: Sequence[str], env: dict[str, str], metrics: Path, step: int, *,
                  timeout: float = 600) -> int:
    """Start ``command`` (a training run), SIGKILL it once ``metrics`` logs ``step``; returns the last step logged.
    Fails the test when the run ends on its own first (nothing would be interrupted)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while metrics_step(metrics) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step}: nothing was interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return metrics_step(metrics)
