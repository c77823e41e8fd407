"""FSDP on CPU processes: ``accelerate launch --use_fsdp`` with 2 processes really shards the transformer (FSDP2
``fully_shard`` over gloo), trains the same weights as one process with the same global batch, writes checkpoints
in the one-process format (same tensors, same optimizer layout), and resumes from them exactly.

Same data and batch arithmetic as ``test_train_distributed``: two aspect buckets, one process with twice the
per-device token budget of each of the two. Validation runs too (on both ranks in step, since a sharded forward
needs every rank), and its held-out loss must match the one-process run's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from firered_train.config import LoRAConfig, ModelConfig
from firered_train.model.components import build_components, make_trainable
from firered_train.scale.sharding import materialize, meta_copy

from tests.train_fixtures import cli, cli_env, free_port, make_pairs, read_tensors, tiny_overrides

STEPS, EVERY = 6, 3
SHARD = re.compile(r"fsdp shard rank=(\d+) local=(\d+) total=(\d+)( after \d+ steps)?")
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "ema.safetensors")


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max((float((a[k].float() - b[k].float()).abs().max()), k) for k in a)


def _val_losses(run: Path) -> dict[int, float]:
    lines = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["val_loss"] for r in lines if "val_loss" in r}


def _fsdp(env: dict[str, str], args: list[str]) -> str:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "firered_train.cli", "-v", "train", "tiny_sft", *args]
    done = subprocess.run(launch, env=env, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process and two FSDP processes trained from the same cache, and the FSDP run resumed half way."""
    root = tmp_path_factory.mktemp("fsdp")
    make_pairs(root / "train", 12)
    make_pairs(root / "train", 12, size=(64, 32), prefix="w", seed=1)
    env = cli_env(threads=1)
    base = tiny_overrides(root, steps=STEPS, val=False, extra=[
        f"--checkpoint.every_steps={EVERY}", "--checkpoint.keep_last=null", f"--logging.validation_every={EVERY}",
        "--logging.n_val_samples=1", "--logging.val_sampling_steps=2"])
    one, two = ["--data.sampler.token_budget=512"], ["--data.sampler.token_budget=256"]
    subprocess.run(cli("cache", "tiny_sft", *base), check=True, env=env, timeout=600)
    subprocess.run(cli("train", "tiny_sft", *base, *one, f"--output_dir={root / 'one'}"), check=True, env=env,
                   timeout=600)
    log = _fsdp(env, [*base, *two, f"--output_dir={root / 'two'}"])
    middle = root / "two" / "checkpoints" / f"step-{EVERY:06d}"
    _fsdp(env, [*base, *two, f"--output_dir={root / 'resumed'}", f"--checkpoint.resume={middle}"])
    return {"root": root, "log": log}


@pytest.mark.slow
def test_each_rank_holds_half_of_the_parameters(runs: dict[str, Any]) -> None:
    found = SHARD.findall(runs["log"])
    for phase in ("", f" after {STEPS} steps"):  # right after sharding, and after training
        ranks = {int(rank): (int(local), int(total)) for rank, local, total, when in found if when == phase}
        assert sorted(ranks) == [0, 1], f"shard lines {found}"
        total = ranks[0][1]
        assert all(local < total for local, _ in ranks.values()), ranks
        assert sum(local for local, _ in ranks.values()) == total, ranks


@pytest.mark.slow
def test_two_fsdp_processes_match_one_process(runs: dict[str, Any]) -> None:
    root: Path = runs["root"]
    init = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer.state_dict()
    one, two = read_tensors(root / "one" / "transformer.safetensors"), read_tensors(root / "two" / "transformer.safetensors")
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    worst = _worst(one, two)
    assert moved > 1e-3, "training did not change the weights"
    assert worst[0] < 1e-5, f"1 process vs 2 FSDP processes differ by {worst[0]:.3g} in {worst[1]}"
    final = f"checkpoints/step-{STEPS:06d}"
    for name in CHECKPOINT_FILES:  # the same checkpoint format, the same values up to summation order
        assert _worst(read_tensors(root / "one" / final / name), read_tensors(root / "two" / final / name))[0] < 1e-5, name
    meta = [json.loads((root / run / final / "meta.json").read_text())["sections"] for run in ("one", "two")]
    assert meta[0]["optimizer"]["tree"] == meta[1]["optimizer"]["tree"]
    val_one, val_two = _val_losses(root / "one"), _val_losses(root / "two")
    assert sorted(val_one) == sorted(val_two) == [0, EVERY, STEPS]
    assert all(abs(val_one[s] - val_two[s]) < 1e-5 for s in val_one), (val_one, val_two)


@pytest.mark.slow
def test_resuming_an_fsdp_checkpoint_is_exact(runs: dict[str, Any]) -> None:
    root: Path = runs["root"]
    final = f"checkpoints/step-{STEPS:06d}"
    for name in CHECKPOINT_FILES:
        straight, resumed = read_tensors(root / "two" / final / name), read_tensors(root / "resumed" / final / name)
        assert straight.keys() == resumed.keys()
        different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
        assert not different, f"{name}: {len(different)} tensors differ after resuming at step {EVERY}"
    assert torch.equal(read_tensors(root / "two" / "transformer.safetensors")["img_in.weight"],
                       read_tensors(root / "resumed" / "transformer.safetensors")["img_in.weight"])


def test_meta_copy_takes_no_memory_and_materializes_a_lora_model() -> None:
    transformer = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer
    make_trainable(transformer, ModelConfig(preset="tiny", finetune="lora"), LoRAConfig(rank=2), seed=0)
    skeleton = meta_copy(transformer)
    assert all(p.is_meta for p in skeleton.parameters())
    assert [n for n, p in skeleton.named_parameters() if p.requires_grad] == \
        [n for n, p in transformer.named_parameters() if p.requires_grad]
    state = {k: v.clone() + 1 for k, v in transformer.state_dict().items()}
    whole = materialize(skeleton, state)
    assert all(torch.equal(whole.state_dict()[k], state[k]) for k in state)
    assert not any(p.is_meta for p in transformer.parameters())  # the original is untouched
