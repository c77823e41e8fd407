"""``firered prefs``: pairing rules by hand, and the whole command on the embedded model with the verifiable
reward (its manifest read back by the preference reader)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from firered_bench import write_dataset
from firered_core.config import ConfigError
from firered_core.default import is_available
from firered_train.data.preference import read_preferences
from firered_train.prefs.command import build_preferences, read_samples, register_prefs
from firered_train.prefs.pairs import TARGET, PairConfig, pick_pair


def test_best_worst_pairs_the_extremes_when_they_differ_enough() -> None:
    config = PairConfig(mode="best-worst", k=3, min_gap=0.2)
    assert pick_pair([0.2, 0.9, 0.5], config) == (1, 0)
    assert pick_pair([0.5, 0.6, 0.55], config) is None  # gap 0.1 < 0.2
    assert pick_pair([0.7, 0.7, 0.1], config) == (0, 2)  # a tie goes to the earlier edit
    assert pick_pair([math.nan, 0.9, 0.1], config) == (1, 2)  # NaN is never picked
    assert pick_pair([math.nan, math.nan], PairConfig(k=2)) is None


def test_target_vs_failed_pairs_the_target_with_the_worst_failed_edit() -> None:
    config = PairConfig(mode="target-vs-failed", k=3, fail_below=1.0)
    assert pick_pair([1.0, 0.4, 0.8], config) == (TARGET, 1)
    assert pick_pair([1.0, 1.0, 1.0], config) is None  # the model gets it right: nothing to learn


@pytest.mark.parametrize("kwargs, field", [({"mode": "random"}, "mode"), ({"k": 1}, "k"),
                                           ({"min_gap": -0.1}, "min_gap"), ({"fail_below": math.inf}, "fail_below")])
def test_bad_settings_are_refused_by_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PairConfig(**kwargs)


@pytest.mark.skipif(not is_available(), reason="the embedded default model is not installed")
def test_prefs_on_the_embedded_model_writes_pairs_the_dpo_reader_loads(tmp_path: Path) -> None:
    from firered_train.prefs.command import model_edit_fn

    manifest = write_dataset(tmp_path / "syn", "heldout", 4, seed=3, size=64)
    samples = list(read_samples(manifest))
    assert len(samples) == 4 and all(s.spec is not None for s in samples)
    edit = model_edit_fn(None, steps=2)
    out = tmp_path / "prefs"
    path, seen, pairs = build_preferences(samples, edit, "verifiable", out,
                                          PairConfig(mode="target-vs-failed", k=2), seed=0)
    records = read_preferences(path)
    assert seen == 4 and len(records) == pairs and pairs >= 1  # 2 steps: the model fails most edits
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row, record in zip(rows, records):
        assert "winner_score" not in row and 0 <= row["loser_score"] < 1.0  # the target has no score
        assert (out / row["winner"]).is_file() and (out / row["loser"]).is_file()
        assert len(record.sources) == len(row["sources"])
    # edits are seeded: the same call gives the same pictures
    again, _, _ = build_preferences(samples, edit, "verifiable", tmp_path / "again",
                                    PairConfig(mode="target-vs-failed", k=2), seed=0)
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_preferences(samples, edit, "verifiable", out, PairConfig(mode="target-vs-failed", k=2))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the refused run left nothing behind


def test_the_command_refuses_an_existing_folder_before_loading_a_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    run = register_prefs(parser)
    (tmp_path / "out").mkdir()
    args = parser.parse_args([str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out")])
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(args)
    args = parser.parse_args([str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "new")])
    with pytest.raises(FileNotFoundError, match="none.jsonl"):
        run(args)


def test_the_verifiable_reward_needs_a_spec(tmp_path: Path) -> None:
    from PIL import Image

    from firered_train.prefs.scoring import PrefSample, score_edits

    picture = Image.new("RGB", (16, 16))
    sample = PrefSample("x", "add", "add a star", [picture], picture, spec=None)
    with pytest.raises(ValueError, match="needs the sample's 'spec'"):
        score_edits("verifiable", sample, [picture])
    with pytest.raises(ValueError, match="reward must be one of"):
        score_edits("beauty", sample, [picture])


def test_text_edits_are_scored_by_the_ocr_reward() -> None:
    pytest.importorskip("rapidocr")
    from PIL import Image, ImageDraw, ImageFont

    from firered_train.prefs.scoring import PrefSample, score_edits

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 36)

    def sign(text: str) -> Image.Image:
        image = Image.new("RGB", (320, 160), "white")
        ImageDraw.Draw(image).text((60, 55), text, fill="black", font=font)
        return image

    sample = PrefSample("s", "text", 'Change "OPEN" to "CLOSED"', [sign("OPEN")], sign("CLOSED"))
    right, wrong, blank = score_edits("ocr", sample, [sign("CLOSED"), sign("HELLO"), sign("")])
    assert right > wrong > blank == 0.0
    pair = pick_pair([right, wrong, blank], PairConfig(k=3))
    assert pair == (0, 2)
