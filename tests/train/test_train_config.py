"""Training config: shipped stage YAMLs, overrides with type coercion, and errors that name the bad key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from firered_core.config import ConfigError
from firered_core.lora import DEFAULT_TARGETS
from firered_train.config import (TrainConfig, apply_overrides, config_from_dict, load_config, save_config,
                                  shipped_configs, to_yaml)
from firered_train.data import BucketSamplerConfig, SIAConfig

STAGES = {"pretrain", "continued", "sft", "dpo", "nft", "lora", "tiny_sft", "tiny_lora", "tiny_dpo", "tiny_nft",
          "sft_consistency", "tiny_sft_consistency"}


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- shipped configs
def test_every_stage_config_ships_and_loads() -> None:
    shipped = shipped_configs()
    assert set(shipped) == STAGES, sorted(shipped)  # user stages only: the default model's recipe is in recipes/
    for name in shipped:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)
        assert isinstance(cfg.data.sampler, BucketSamplerConfig) and isinstance(cfg.data.sia, SIAConfig)
        # the report's optimizer settings hold in every transformer stage
        assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.weight_decay == 0.01 and cfg.optim.grad_clip == 1.0
        assert cfg.optim.optimizer == "adamw"


def test_the_consistency_stages_are_sft_with_the_report_cut_off() -> None:
    sft, cfg, tiny = load_config("sft"), load_config("sft_consistency"), load_config("tiny_sft_consistency")
    assert cfg.consistency.enabled and cfg.consistency.sigma_max == 0.9 and cfg.consistency.crop == 112
    assert (cfg.data, cfg.optim, cfg.schedule, cfg.model) == (sft.data, sft.optim, sft.schedule, sft.model)
    assert tiny.consistency.enabled and tiny.model.preset == "tiny" and tiny.data.reader == "jsonl"
    assert not sft.consistency.enabled  # off unless a stage turns it on


@pytest.mark.parametrize("name,side,steps,warmup", [
    ("pretrain", 512, 300_000, 0), ("continued", 1024, 65_000, 0), ("sft", 1024, 5_000, 500),
    ("dpo", 1024, 5_000, 500),
])
def test_stage_values_follow_the_report(name: str, side: int, steps: int, warmup: int) -> None:
    cfg = load_config(name)
    assert cfg.stage == name and cfg.model.finetune == "full"
    assert cfg.data.sampler.max_area == side * side
    assert cfg.schedule.max_steps == steps and cfg.optim.warmup_steps == warmup
    assert cfg.precision == "bf16" and cfg.model.gradient_checkpointing


def test_dpo_stages_read_preference_pairs_with_a_matching_reference() -> None:
    dpo, tiny = load_config("dpo"), load_config("tiny_dpo")
    assert dpo.objective.kind == tiny.objective.kind == "dpo"
    assert dpo.data.reader == tiny.data.reader == "preference" and dpo.data.cache_dir is None
    assert (dpo.dpo.beta, dpo.dpo.omega, dpo.dpo.sft_weight) == (2500.0, 1.0, 0.0)  # Diffusion-DPO's defaults
    assert dpo.dpo.reference == "frozen_copy" and not dpo.is_lora
    assert tiny.dpo.reference == "lora_disabled" and tiny.is_lora and tiny.model.preset == "tiny"
    assert load_config("sft").objective.kind == "flow"


def test_pretrain_mixes_text_to_image_and_editing() -> None:
    weights = load_config("pretrain").data.sampler.source_count_weights
    assert weights[0] > 0 and sum(w for n, w in weights.items() if n > 0) == pytest.approx(weights[0])
    assert load_config("pretrain").objective.timesteps.curriculum == "high_noise_first"


def test_lora_and_tiny_variants() -> None:
    lora = load_config("lora")
    assert lora.is_lora and lora.lora.rank == 16 and lora.lora.alpha == 16.0
    assert lora.lora.target_modules == DEFAULT_TARGETS
    assert dict(lora.data.sampler.source_count_weights) == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}
    assert not lora.ema.enabled
    for name, base in (("tiny_sft", "sft"), ("tiny_lora", "lora")):
        tiny, full = load_config(name), load_config(base)
        assert tiny.model.preset == "tiny" and tiny.model.weights is None and tiny.precision == "fp32"
        assert tiny.data.sampler.pixels_per_token == 8  # the tiny VAE compresses 4x, patch 2
        assert tiny.model.finetune == full.model.finetune  # inherited through 'base'
        assert tiny.optim.betas == full.optim.betas


@pytest.mark.parametrize("name", sorted(STAGES))
def test_to_yaml_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(path) == cfg
    assert "base:" not in path.read_text()


def test_save_config_never_overwrites_silently(tmp_path: Path) -> None:
    path = save_config(TrainConfig(), tmp_path / "config.yaml")
    with pytest.raises(FileExistsError, match="config.yaml"):
        save_config(TrainConfig(seed=1), path)
    save_config(TrainConfig(seed=1), path, overwrite=True)
    assert load_config(path).seed == 1
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp files left


# ---------------------------------------------------------------- YAML reading
def test_missing_keys_keep_defaults_and_yaml_quirks_are_coerced(tmp_path: Path) -> None:
    path = _write(tmp_path, "optim:\n  lr: 1e-4\nschedule:\n  max_steps: 3e3\ndata:\n  sampler:\n"
                            "    source_count_weights: {1: 2}\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # PyYAML reads "1e-4" as a string
    assert cfg.schedule.max_steps == 3000 and isinstance(cfg.schedule.max_steps, int)
    assert dict(cfg.data.sampler.source_count_weights) == {1: 2.0}
    assert cfg.optim.betas == (0.9, 0.999) and cfg.model == TrainConfig().model


def test_base_chain_merges_sections_and_replaces_mappings(tmp_path: Path) -> None:
    _write(tmp_path, "stage: parent\noptim:\n  lr: 0.5\n  warmup_steps: 7\ndata:\n  sampler:\n"
                     "    source_count_weights: {0: 1, 1: 1}\n", "parent.yaml")
    child = _write(tmp_path, "base: parent.yaml\noptim:\n  lr: 0.25\ndata:\n  sampler:\n"
                             "    source_count_weights: {2: 1}\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.stage == "parent" and cfg.optim.lr == 0.25 and cfg.optim.warmup_steps == 7
    assert dict(cfg.data.sampler.source_count_weights) == {2: 1.0}  # replaced whole, not merged


def test_a_config_anywhere_reads_its_base_beside_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``firered train PATH`` takes any file, not only the package's stage configs (the default model's recipe lives
    in recipes/), and a relative ``base`` is read from the config's own folder whatever the working directory."""
    _write(tmp_path, "stage: parent\nseed: 3\n", "parent.yaml")
    (tmp_path / "steps").mkdir()
    child = _write(tmp_path / "steps", "base: ../parent.yaml\noptim:\n  lr: 0.25\n", "child.yaml")
    cwd = tmp_path / "elsewhere" / "cwd"
    cwd.mkdir(parents=True)
    _write(tmp_path / "elsewhere", "stage: decoy\nseed: 9\n", "parent.yaml")  # ../parent.yaml from the cwd
    monkeypatch.chdir(cwd)
    cfg = load_config(str(child))
    assert (cfg.stage, cfg.seed, cfg.optim.lr) == ("parent", 3, 0.25)
    monkeypatch.chdir(tmp_path)
    assert load_config("steps/child.yaml") == cfg  # a path relative to the working directory

def test_base_cycle_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, "base: b.yaml\n", "a.yaml")
    _write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("text,match", [
    ("optim:\n  lr: [1\n", r"invalid YAML at line \d+"),
    ("- 1\n- 2\n", "top level must be a mapping"),
    ("optim:\n  weight_decy: 1\n", r"optim\.weight_decy: unknown key \(did you mean 'weight_decay'\?\)"),
    ("optimizer: adamw\n", r"optimizer: unknown key.*'optim'"),
    ("optim: 3\n", "optim: expected a mapping of OptimConfig"),
    ("schedule:\n  max_steps: ten\n", r"schedule\.max_steps: expected an int, got 'ten'"),
    ("schedule:\n  max_steps: 2.5\n", r"schedule\.max_steps: expected an int"),
    ("model:\n  gradient_checkpointing: 1\n", r"model\.gradient_checkpointing: expected a bool"),
    ("model:\n  preset: 7\n", r"model\.preset: expected a string.*quote it"),
    ("precision: fp16\n", r"precision: must be one of 'fp32', 'bf16', got 'fp16'"),
    ("optim:\n  betas: [0.9]\n", r"optim\.betas: expected 2 values"),
    ("optim:\n  betas: [0.9, x]\n", r"optim\.betas\[1\]: expected a float"),
    ("optim:\n  lr: -1\n", r"optim\.lr: must be > 0"),
    ("lora:\n  init: pissa\n", r"lora\.init: must be one of kaiming, gaussian"),
    ("model:\n  preset: huge\n", r"model\.preset: unknown preset 'huge'"),
    ("data:\n  sampler:\n    token_budget: 0\n", r"data\.sampler: token_budget and max_area must be positive"),
    ("data:\n  sia:\n    shuffle_prob: 2\n", r"data\.sia: SIAConfig\.shuffle_prob"),
    ("data:\n  sampler:\n    source_count_weights: {one: 1}\n", r"data\.sampler\.source_count_weights\.one"),
    ("optim:\n  warmup_steps: 20\nschedule:\n  max_steps: 10\n", r"optim\.warmup_steps: 20 exceeds"),
    ("checkpoint:\n  every_steps: null\n", r"checkpoint\.every_steps: must not be null"),
])
def test_bad_files_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


def test_unknown_config_name() -> None:
    with pytest.raises(FileNotFoundError, match="not a shipped config"):
        load_config("no_such_stage")


# ---------------------------------------------------------------- overrides
def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    cfg = load_config("tiny_sft", [
        "--optim.lr=2e-5", "--optim.betas=0.9,0.95", "--schedule.max_steps=12", "--model.gradient_checkpointing=true",
        "--lora.target_modules=attn.to_q,attn.to_k", "--checkpoint.keep_last=null", "--data.path=pairs/001",
        "--data.sampler.token_budget=1024", "--objective.timesteps.mode=uniform", "seed=3", "--stage=demo",
    ])
    assert cfg.optim.lr == 2e-5 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.schedule.max_steps == 12 and cfg.model.gradient_checkpointing is True
    assert cfg.lora.target_modules == ("attn.to_q", "attn.to_k")
    assert cfg.checkpoint.keep_last is None
    assert cfg.data.path == "pairs/001"  # strings stay verbatim
    assert cfg.data.sampler.token_budget == 1024 and cfg.data.sampler.max_area == 4096  # siblings kept
    assert cfg.objective.timesteps.mode == "uniform" and cfg.seed == 3 and cfg.stage == "demo"


def test_overrides_in_list_syntax_and_mapping_entries() -> None:
    cfg = config_from_dict({}, ["--optim.betas=[0.8, 0.9]", "--lora.target_modules=[attn.to_q]",
                                "--data.sampler.source_count_weights.3=0.5",
                                "--data.sampler.task_weights.edit=2"])
    assert cfg.optim.betas == (0.8, 0.9) and cfg.lora.target_modules == ("attn.to_q",)
    # an entry override keeps the other entries of the default mapping
    assert dict(cfg.data.sampler.source_count_weights) == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.5}
    assert dict(cfg.data.sampler.task_weights) == {"edit": 2.0}  # was null: starts empty


def test_mapping_entry_override_merges_with_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  sampler:\n    source_count_weights: {0: 0, 1: 1}\n")
    cfg = load_config(path, ["--data.sampler.source_count_weights.2=4"])
    assert dict(cfg.data.sampler.source_count_weights) == {0: 0.0, 1: 1.0, 2: 4.0}


def test_overrides_leave_the_input_untouched() -> None:
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["--optim.lr=2"])
    assert data == {"optim": {"lr": 1.0}} and out["optim"]["lr"] == 2.0


@pytest.mark.parametrize("override,match", [
    ("--optim.lrr=1", r"optim\.lrr: unknown key \(did you mean 'lr'\?\)"),
    ("--nope.lr=1", r"nope: unknown key"),
    ("--optim.lr.x=1", r"optim\.lr: is a float, it has no key 'x'"),
    ("--optim.lr=fast", r"optim\.lr: expected a float, got 'fast'"),
    ("--optim.betas=0.9", r"optim\.betas: expected a list of 2 values"),
    ("--optim.betas=0.9,x", r"optim\.betas\[1\]: expected a float"),
    ("--schedule.max_steps=1.5", r"schedule\.max_steps: expected an int"),
    ("--logging.tensorboard=maybe", r"logging\.tensorboard: expected a bool"),
    ("--optim.lr_schedule=step", r"optim\.lr_schedule: must be one of 'constant', 'cosine', 'linear'"),
    ("--schedule.max_steps=null", r"schedule\.max_steps: must not be null"),
    ("--optim.lr=-3", r"optim\.lr: must be > 0"),
    ("--data.sampler.source_count_weights.x=1", r"data\.sampler\.source_count_weights\.x: expected an int"),
    ("--optim.lr", "expected --section.key=value"),
    ("--=3", "expected --section.key=value"),
])
def test_bad_overrides_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_sft", [override])


def test_direct_construction_checks_fields_too() -> None:
    with pytest.raises(ConfigError, match="lr: must be > 0"):
        dataclasses.replace(TrainConfig().optim, lr=0.0)
    with pytest.raises(ConfigError, match="fp8: a float8 base cannot be trained"):
        config_from_dict({"model": {"fp8": True}})
    assert config_from_dict({"model": {"fp8": True, "finetune": "lora"}}).model.fp8


def test_to_yaml_is_plain_and_complete() -> None:
    cfg = load_config("tiny_lora", ["--optim.betas=0.85,0.99"])
    data = yaml.safe_load(to_yaml(cfg))
    assert data["optim"]["betas"] == [0.85, 0.99]
    assert data["data"]["sampler"]["source_count_weights"] == {0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}
    assert set(data) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert config_from_dict(data) == cfg


def test_checkpoint_dir_defaults_under_output_dir() -> None:
    assert TrainConfig(output_dir="runs/a").checkpoint_dir == Path("runs/a/checkpoints")
    assert config_from_dict({"checkpoint": {"dir": "ck"}}).checkpoint_dir == Path("ck")
