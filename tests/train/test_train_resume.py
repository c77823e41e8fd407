"""Exact resume: a run killed with SIGKILL at a random step and resumed with ``--resume latest`` ends bitwise equal
to the same run uninterrupted, and no partial checkpoint is ever left behind.

Both runs are real ``firered train`` processes (tiny preset, full fine-tune with EMA, gradient accumulation 2,
reading a cache made by ``firered cache``). The killer watches the metrics log and sends SIGKILL once the run
has passed a randomly chosen step, which may land in the middle of a checkpoint save.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch

from firered_core.loading import open_weights

from tests.train_fixtures import cli, cli_env, make_pairs, sigkill_after, tiny_overrides

STEPS = 14
EVERY = 3


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_weights(path) as src:
        return {k: src.get(k) for k in src.keys()}


def _assert_no_partial_checkpoints(root: Path) -> None:
    names = sorted(p.name for p in root.iterdir())
    assert not [n for n in names if n.startswith((".tmp-", ".trash-"))], names
    for step_dir in root.glob("step-*"):
        assert (step_dir / "meta.json").is_file(), f"incomplete checkpoint {step_dir}"
    latest = (root / "latest").read_text().strip()
    assert (root / latest / "meta.json").is_file()


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_exact(tmp_path: Path) -> None:
    make_pairs(tmp_path / "train", 12)
    common = ["--schedule.grad_accumulation=2", "--data.sampler.token_budget=256", f"--checkpoint.every_steps={EVERY}",
              "--checkpoint.keep_last=2", "--logging.validation_every=0", "--logging.every_steps=1"]
    env = cli_env()
    base = tiny_overrides(tmp_path, steps=STEPS, val=False, extra=common)
    subprocess.run(cli("cache", "tiny_sft", *base), check=True, env=env, timeout=300)

    straight = base + [f"--output_dir={tmp_path / 'straight'}"]
    subprocess.run(cli("train", "tiny_sft", *straight), check=True, env=env, timeout=300)

    kill_after = random.Random(time.time_ns()).randint(EVERY + 1, STEPS - 2)
    resumed = base + [f"--output_dir={tmp_path / 'resumed'}"]
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    killed_at = sigkill_after(cli("train", "tiny_sft", *resumed), env, metrics, kill_after)
    ckpts = tmp_path / "resumed" / "checkpoints"
    subprocess.run(cli("train", "tiny_sft", *resumed, "--resume", "latest"), check=True, env=env, timeout=300)

    final = f"step-{STEPS:06d}"
    a, b = tmp_path / "straight" / "checkpoints" / final, ckpts / final
    for name in ("model.safetensors", "optimizer.safetensors", "ema.safetensors"):
        ta, tb = _tensors(a / name), _tensors(b / name)
        assert ta.keys() == tb.keys()
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{name}: {len(different)} tensors differ after a kill at step {killed_at}, e.g. " \
                              f"{different[:3]}"
    assert torch.equal(_tensors(tmp_path / "straight" / "transformer.safetensors")["img_in.weight"],
                       _tensors(tmp_path / "resumed" / "transformer.safetensors")["img_in.weight"])
    _assert_no_partial_checkpoints(ckpts)
    steps_logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == STEPS, "metrics log not rewound"
