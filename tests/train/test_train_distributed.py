"""Real distribution: ``accelerate launch`` with 2 CPU processes (DDP over gloo) trains the same weights as one
process with the same global batch, and the bucket sampler never gives the two ranks different shapes in a step.

The data has two aspect buckets (64x64 and 64x32 pairs), so consecutive steps really change shape. One process
gets twice the per-device token budget of each of the two processes, hence twice their batch: the same global
batch, the same samples (the sampler shards a bucket's shuffled order by rank) and the same per-sample noise and
timesteps (seeded by sample, not by rank; stratified by position in the global batch). Only the order of
floating-point sums differs.
"""

from __future__ import annotations

import re
import sys
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from firered_train.config import ModelConfig
from firered_train.model.components import build_components

from tests.train_fixtures import cli, cli_env, free_port, make_pairs, read_tensors, tiny_overrides

STEPS = 6
SHAPES = re.compile(r"batch-shapes rank=(\d+) micro=(\d+) batch=(\d+) target=(\(.*?\)) sources=(\[.*?\])")


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    make_pairs(tmp_path / "train", 12)
    make_pairs(tmp_path / "train", 12, size=(64, 32), prefix="w", seed=1)
    env = cli_env(threads=1)
    base = tiny_overrides(tmp_path, steps=STEPS, val=False,
                          extra=["--logging.validation_every=0", "--checkpoint.every_steps=100"])
    subprocess.run(cli("cache", "tiny_sft", *base), check=True, env=env, timeout=300)
    subprocess.run(cli("train", "tiny_sft", *base, f"--output_dir={tmp_path / 'one'}",
                       "--data.sampler.token_budget=512"), check=True, env=env, timeout=300)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "-m", "firered_train.cli", "-vv", "train", "tiny_sft", *base, f"--output_dir={tmp_path / 'two'}",
              "--data.sampler.token_budget=256"]
    done = subprocess.run(launch, env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    by_step: dict[int, dict[int, tuple[str, str, str]]] = defaultdict(dict)
    for rank, micro, batch, target, sources in SHAPES.findall(done.stderr):
        by_step[int(micro)][int(rank)] = (batch, target, sources)
    assert sorted(by_step) == list(range(STEPS)), sorted(by_step)
    for micro, ranks in by_step.items():
        assert sorted(ranks) == [0, 1], f"step {micro}: shapes logged by ranks {sorted(ranks)}"
        assert ranks[0] == ranks[1], f"step {micro}: rank 0 got {ranks[0]}, rank 1 got {ranks[1]}"
    assert len({r[0][1] for r in by_step.values()}) == 2, "both aspect buckets should have been drawn"

    one, two = read_tensors(tmp_path / "one" / "transformer.safetensors"), read_tensors(tmp_path / "two" /
                                                                                "transformer.safetensors")
    init = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer.state_dict()
    assert one.keys() == two.keys() == init.keys()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    worst = max((float((one[k] - two[k]).abs().max()), k) for k in one)
    assert moved > 1e-3, "training did not change the weights"
    assert worst[0] < 1e-5, f"1 vs 2 processes differ by {worst[0]:.3g} in {worst[1]} (training moved them {moved:.3g})"


def test_train_command_leaves_its_process_group_even_when_it_fails(tmp_path: Path) -> None:
    """A launched run joins a gloo group; ``firered train`` destroys it before returning (left to the interpreter's
    shutdown it can abort a rank after the work is done), and does so on failure too."""
    import argparse

    import torch.distributed as dist

    from firered_train.cli import run_train
    from firered_train.scale.distributed import leave_process_group

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        args = argparse.Namespace(config="tiny_sft", overrides=[f"--data.path={tmp_path / 'missing'}",
                                                                f"--output_dir={tmp_path / 'run'}"])
        with pytest.raises(FileNotFoundError, match="missing"):
            run_train(args)
        assert not dist.is_initialized()
        leave_process_group()  # nothing left to leave: a no-op
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
