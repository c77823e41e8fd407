"""DPO from the trainer: ``firered train tiny_dpo`` on a preference manifest made here.

Winners are exact synthetic edit targets (``firered_bench.generate``), losers the unedited source, so every pair
has one source and a clear preference. The tiny run must log the DPO terms, export a LoRA, and its logged loss
must equal the DPO formula evaluated on the logged per-pair values (one pair per step: the step's mean is the
pair's value). Resuming from a mid-run checkpoint must end bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from firered_bench.generate.generator import GeneratorConfig, generate
from firered_core.config import ConfigError
from firered_core.lora import apply_lora, list_loras
from firered_train.config import ModelConfig, load_config
from firered_train.model.components import build_components
from firered_train.loop.trainer import DPO_METRICS, Trainer

from tests.train_fixtures import cli, cli_env, read_tensors

BETA, OMEGA, SFT = 100.0, 2.0, 0.5


def make_preferences(folder: Path, n: int) -> Path:
    """``n`` one-source pairs (winner = the exact target, loser = the source) in ``folder/prefs.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    config = GeneratorConfig(tasks=("add", "remove", "color"))
    for i, sample in enumerate(generate("train", n, seed=3, config=config)):
        names = {k: f"{i:03d}_{k}.png" for k in ("source", "winner")}
        sample.sources[0].save(folder / names["source"])
        sample.target.save(folder / names["winner"])
        lines.append({"id": f"pair{i}", "sources": [names["source"]], "instruction": sample.instruction,
                      "winner": names["winner"], "loser": names["source"]})
    manifest = folder / "prefs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


def overrides(manifest: Path, out: Path, steps: int, *extra: str) -> list[str]:
    # a token budget of one pair (64 target + 64 source tokens) per step makes each logged value one pair's
    return [f"--data.path={manifest}", f"--output_dir={out}", f"--schedule.max_steps={steps}",
            "--data.sampler.token_budget=128", f"--dpo.beta={BETA}", f"--dpo.omega={OMEGA}",
            f"--dpo.sft_weight={SFT}", *extra]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_preferences(tmp_path_factory.mktemp("prefs"), 6)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tiny_dpo_cli_logs_the_dpo_terms_and_exports_a_lora(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    subprocess.run(cli("train", "tiny_dpo", *overrides(manifest, out, 4)), check=True, env=cli_env(), timeout=300)
    train = [r for r in _lines(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert set(DPO_METRICS) <= r.keys()
        # hand-check: ref_w = loss_w - diff_w is implied; margin = beta (diff_l - omega diff_w)
        margin = BETA * (r["diff_l"] - OMEGA * r["diff_w"])
        expected = math.log1p(math.exp(-margin)) + SFT * r["loss_w"]  # -log sigmoid(m) = log(1 + e^-m)
        assert r["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert r["reward_margin"] == pytest.approx(BETA * (r["diff_l"] - r["diff_w"]), rel=1e-4, abs=1e-5)
        assert r["accuracy"] == (1.0 if r["reward_margin"] > 0 else 0.0)
    # step 1 starts at the reference (zero-init LoRA up-projections): nothing differs from it yet
    assert train[0]["diff_w"] == 0.0 and train[0]["diff_l"] == 0.0
    assert train[0]["loss"] == pytest.approx(math.log(2.0) + SFT * train[0]["loss_w"], rel=1e-6)
    assert any(r["diff_w"] != 0.0 for r in train[1:])  # the adapters moved away from the reference
    assert any("val_loss" in r for r in _lines(out / "metrics.jsonl"))  # the held-out flow loss stays
    fresh = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer
    report = apply_lora(fresh, out / "lora.safetensors")  # the export loads into a fresh model, every key matched
    assert report.unmatched == [] and report.applied == 2 * 12 and list(list_loras(fresh)) == ["lora"]


@pytest.mark.slow
def test_resume_is_bit_identical(manifest: Path, tmp_path: Path) -> None:
    common = ["--data.num_workers=0", "--checkpoint.every_steps=2", "--checkpoint.keep_last=5",
              "--logging.validation_every=0", "--logging.progress_bar=false", "--logging.tensorboard=false",
              "--schedule.grad_accumulation=2", "--data.sampler.token_budget=256"]
    straight = Trainer(load_config("tiny_dpo", overrides(manifest, tmp_path / "a", 5, *common)))
    straight.run()
    first = Trainer(load_config("tiny_dpo", overrides(manifest, tmp_path / "b", 2, *common)))
    first.run()
    resumed = Trainer(load_config("tiny_dpo", overrides(manifest, tmp_path / "b", 5, *common,
                                                        "--checkpoint.resume=latest")))
    resumed.run()
    a, b = read_tensors(tmp_path / "a" / "lora.safetensors"), read_tensors(tmp_path / "b" / "lora.safetensors")
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed LoRA differs from the uninterrupted run"
    la = [r for r in _lines(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [r for r in _lines(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5] and [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_a_latent_cache_is_refused_with_dpo(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.cache_dir: DPO encodes its pairs online"):
        load_config("tiny_dpo", overrides(manifest, tmp_path, 2, f"--data.cache_dir={tmp_path / 'cache'}"))


@pytest.mark.parametrize("extra,match", [
    (["--model.finetune=full"], r"dpo\.reference: 'lora_disabled' needs a LoRA run"),
    (["--data.reader=jsonl"], r"data\.reader: objective\.kind: dpo needs data\.reader: preference"),
    (["--objective.kind=flow"], r"data\.reader: 'preference' pairs train only with objective\.kind: dpo"),
    (["--dpo.reference=copy"], r"dpo\.reference: must be one of 'lora_disabled', 'frozen_copy', got 'copy'"),
    (["--objective.rollout.prob=0.5"], r"objective\.rollout\.prob: rollout inputs are for flow runs"),
])
def test_dpo_config_errors_name_the_field(manifest: Path, tmp_path: Path, extra: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_dpo", overrides(manifest, tmp_path, 2, *extra))


@pytest.mark.slow
def test_bad_preference_lines_are_skipped_and_counted(manifest: Path, tmp_path: Path) -> None:
    bad = tmp_path / "prefs.jsonl"
    good = manifest.read_text(encoding="utf-8").splitlines()
    wide = tmp_path / "wide.png"
    Image.new("RGB", (128, 64), (10, 20, 30)).save(wide)
    rows = [json.loads(line) for line in good[:3]]
    for row in rows:  # absolute paths: the manifest moved
        row.update({k: str(manifest.parent / row[k]) for k in ("winner", "loser")},
                   sources=[str(manifest.parent / s) for s in row["sources"]])
    broken = [dict(rows[0], id="noloser", loser=None), dict(rows[0], id="wideloser", loser=str(wide))]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows + broken) + "{not json\n", encoding="utf-8")
    trainer = Trainer(load_config("tiny_dpo", overrides(bad, tmp_path / "run", 2, "--data.num_workers=0",
                                                        "--logging.validation_every=0")))
    assert len(trainer.data.records) == len(trainer.data.losers) == 3
    assert trainer.state.skips.total == 3  # no loser, a loser of another aspect, a broken line
    trainer.run()
    line = [r for r in _lines(tmp_path / "run" / "metrics.jsonl") if "loss" in r][0]
    assert line["skipped"] == 3


@pytest.mark.slow
def test_full_fine_tuning_uses_a_frozen_copy_as_the_reference(manifest: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny_dpo", overrides(manifest, tmp_path / "full", 2, "--model.finetune=full",
                                            "--dpo.reference=frozen_copy", "--data.num_workers=0",
                                            "--logging.validation_every=0"))
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.transformer.state_dict().items()}
    trainer.run()
    assert trainer.reference is not None and not any(p.requires_grad for p in trainer.reference.parameters())
    # the reference keeps the starting weights while the trained network moves
    assert all(torch.equal(v, start[k]) for k, v in trainer.reference.state_dict().items())
    assert not torch.equal(trainer.transformer.state_dict()["img_in.weight"], start["img_in.weight"])
    first = [r for r in _lines(tmp_path / "full" / "metrics.jsonl") if "loss" in r][0]
    assert first["diff_w"] == 0.0 and first["diff_l"] == 0.0  # step 1: model == reference
    assert (tmp_path / "full" / "transformer.safetensors").is_file()
