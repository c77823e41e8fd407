"""``firered mine``: which prompts are semi-hard, by hand; the selection over scripted edits of real synthetic
samples (each edit is the sample's target or its Picture 1, so the verifiable reward's verdicts are known); and the
whole command on the embedded model, its output read back by the trainer's JSONL reader."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from firered_bench import write_dataset
from firered_core.config import ConfigError
from firered_core.default import is_available
from firered_train.data.records import read_records
from firered_train.prefs.command import read_rows
from firered_train.prefs.mining import MiningConfig, PromptStats, mine_prompts, register_mine


def test_prompt_stats_and_the_semi_hard_rule() -> None:
    stats = PromptStats.of([1.0, 0.0, 1.0, 1.0])
    assert (stats.k, stats.mean, stats.lowest) == (4, 0.75, 0.0)
    assert stats.std == pytest.approx(math.sqrt(0.1875))
    config = MiningConfig(k=4, min_mean=0.25, min_std=0.2, max_lowest=0.5)
    assert stats.semi_hard(config)                                  # good mean, not reliable
    assert not PromptStats.of([1.0] * 4).semi_hard(config)          # solved: every advantage would be 0
    assert not PromptStats.of([0.0] * 4).semi_hard(config)          # hopeless: the same
    assert not PromptStats.of([0.2, 0.0, 0.0, 0.0]).semi_hard(config)  # mean 0.05 < 0.25
    assert PromptStats.of([0.9, 0.9, 0.4, 0.9]).semi_hard(config)   # spread 0.22 and a low worst case
    assert not PromptStats.of([0.9, 0.8, 0.9, 0.8]).semi_hard(config)  # reliable enough: spread 0.05, worst 0.8
    assert PromptStats.of([0.9, 0.8, 0.9, 0.8]).semi_hard(MiningConfig(k=4, max_lowest=0.8))


@pytest.mark.parametrize("kwargs, field", [({"k": 1}, "k"), ({"min_mean": math.nan}, "min_mean"),
                                           ({"min_std": "x"}, "min_std")])
def test_bad_settings_are_refused_by_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        MiningConfig(**kwargs)


def test_mining_keeps_the_mixed_prompts_with_rebased_paths(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "syn", "train", 6, seed=4, size=64)
    rows = read_rows(manifest)
    passes = {0: 4, 1: 0, 2: 2, 3: 3, 4: 1, 5: 4}  # sample i: its first passes[i] edits are the target

    def edit(sample, seeds):  # the target passes the checks, Picture 1 fails them
        index = next(i for i, (_, _, s) in enumerate(rows) if s is sample)
        return [sample.target if seed < passes[index] else sample.sources[0] for seed in seeds]

    out = tmp_path / "mined" / "semi_hard.jsonl"
    seen, kept = mine_prompts(rows, edit, "verifiable", MiningConfig(k=4), out, reward_mode="pass")
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (seen, kept) == (6, 3)
    assert [line["id"] for line in lines] == [rows[i][0]["id"] for i in (2, 3, 4)]  # 2, 3 and 1 of 4 passed
    assert [line["mining"]["mean"] for line in lines] == [0.5, 0.75, 0.25]
    records = read_records("jsonl", str(out))  # the paths point at the same pictures from the new folder
    originals = {r.id: r for r in read_records("jsonl", str(manifest))}
    assert [r.id for r in records] == [line["id"] for line in lines]
    for record in records:
        assert record.target.path.resolve() == originals[record.id].target.path.resolve()
        assert [s.path.resolve() for s in record.sources] == [s.path.resolve()
                                                              for s in originals[record.id].sources]
    assert lines[0]["spec"] == rows[2][0]["spec"]  # the rest of the line is kept: NFT reads its spec
    with pytest.raises(FileExistsError, match="--overwrite"):
        mine_prompts(rows, edit, "verifiable", MiningConfig(k=4), out)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_mining_with_the_judge_reward_asks_the_chat_server(tmp_path: Path) -> None:
    from firered_train.prefs.scoring import chat_judge
    from tests.chat_server import ChatServer, chat_answer

    manifest = write_dataset(tmp_path / "syn", "train", 2, seed=4, size=64)
    rows = read_rows(manifest)
    with ChatServer(reply=chat_answer("Rating: 7")) as server:
        judge = chat_judge(server.url)

        def targets(sample, seeds):  # every edit is the target
            return [sample.target for _ in seeds]

        _, none = mine_prompts(rows, targets, "judge", MiningConfig(k=2), tmp_path / "a.jsonl", judge=judge)
        _, both = mine_prompts(rows, targets, "judge", MiningConfig(k=2, max_lowest=0.7), tmp_path / "b.jsonl",
                               judge=judge)
    assert len(server.requests) == 2 * 2 * 2  # 2 runs x 2 samples x k = 2
    assert (none, both) == (0, 2)  # every rating 0.7: no spread, worst case 0.7 (kept only with max_lowest 0.7)
    with pytest.raises(ValueError, match="needs the endpoint"):
        chat_judge("")


def test_the_command_refuses_an_existing_output_before_loading_a_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    run = register_mine(parser)
    (tmp_path / "out.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(parser.parse_args([str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out.jsonl")]))
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        run(parser.parse_args([str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "new.jsonl")]))
    with pytest.raises(ConfigError, match="^k:"):
        run(parser.parse_args([str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "new.jsonl"), "-k", "1"]))


@pytest.mark.skipif(not is_available(), reason="the embedded default model is not installed")
def test_firered_mine_on_the_embedded_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    manifest = write_dataset(tmp_path / "syn", "train", 4, seed=9, size=64)
    out = tmp_path / "mined.jsonl"
    result = subprocess.run([sys.executable, "-m", "firered_core", "mine", str(manifest), "--out", str(out),
                             "-k", "3", "--steps", "3", "--min-mean", "0", "--max-lowest", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4  # min mean 0 and any worst case: every sample is kept, with its figures
    for line in lines:
        assert line["mining"]["k"] == 3 and 0 <= line["mining"]["lowest"] <= line["mining"]["mean"] <= 1
    assert [r.id for r in read_records("jsonl", str(out))] == [line["id"] for line in lines]
