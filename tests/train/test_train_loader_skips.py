"""Skips found in the trainer's DataLoader workers reach the main process's counters, the last step's too."""

from __future__ import annotations

from pathlib import Path

from firered_train.data import BucketBatchSampler, BucketSamplerConfig, SIAConfig, SkipLog
from firered_train.loop.loader import StepDataset, make_loader
from firered_train.data.records import read_records

from tests.train_fixtures import make_pairs

STEPS = 4


def test_skips_of_the_last_step_in_a_worker_are_counted(tmp_path: Path) -> None:
    make_pairs(tmp_path, 8)
    records = read_records("folder", str(tmp_path))
    config = BucketSamplerConfig(source_count_weights={1: 1.0}, max_area=4096, pixels_per_token=8, token_budget=512)
    planner = BucketBatchSampler(records, config)  # the same plans the loader's sampler will make
    plans = [planner.next_plan() for _ in range(STEPS)]
    last = plans[-1].indices
    for i in last:  # every sample of the last step vanishes after listing: its worker yields no good sample
        (tmp_path / f"{records[i].id}_target.png").unlink()
    broken = {records[i].id for i in last}
    loader = make_loader(StepDataset(records, SIAConfig(text_drop_prob=0.0)), BucketBatchSampler(records, config),
                         STEPS, num_workers=2)
    skips = SkipLog()
    sizes = []
    for loaded in loader:
        loaded.add_skips_to(skips)
        sizes.append(loaded.batch.size)
    expected = sum(1 for plan in plans for i in plan.indices if records[i].id in broken)
    assert sizes[-1] == 0 and skips.counts == {"missing_file": expected}
    assert {sample_id for sample_id, _ in skips.recent} == broken
