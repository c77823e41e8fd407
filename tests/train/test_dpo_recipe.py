"""The DPO "double degradation" experiment (``recipes/dpo_double_degradation/``): every setting loads through the
trainer's config loader as a LoRA DPO run on the embedded model against its adapters-off self, the settings differ
only in the DPO numbers (same data, seed, steps and optimizer), and the README runs each of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from firered_train.config import load_config

FOLDER = "dpo_double_degradation"


def test_settings_differ_only_in_the_dpo_numbers(recipes_dir: Path) -> None:
    files = sorted((recipes_dir / FOLDER).glob("*.yaml"))
    configs = {f.stem: load_config(f) for f in files}
    assert {"plain", "asymmetric"} <= set(configs), sorted(configs)
    plain = configs["plain"]
    assert plain.objective.kind == "dpo" and plain.model.finetune == "lora"
    assert plain.dpo.reference == "lora_disabled"
    assert (plain.dpo.omega, plain.dpo.sft_weight) == (1.0, 0.0)  # plain Diffusion-DPO
    assert plain.model.weights == "firered_core/default/model"
    assert configs["asymmetric"].dpo.omega > 1 and configs["asymmetric"].dpo.sft_weight > 0
    outputs = {c.output_dir for c in configs.values()}
    assert len(outputs) == len(configs), "two settings write into one run folder"
    for name, cfg in configs.items():
        same = replace(cfg, dpo=plain.dpo, stage=plain.stage, output_dir=plain.output_dir)
        assert same == plain, f"{name}.yaml changes more than the dpo section, stage and output_dir"


def test_readme_runs_every_setting_and_plots_them(recipes_dir: Path) -> None:
    readme = (recipes_dir / FOLDER / "README.md").read_text(encoding="utf-8")
    for f in (recipes_dir / FOLDER).glob("*.yaml"):
        assert f"firered -v train recipes/{FOLDER}/{f.name}" in readme, f.name
    assert "firered -v prefs" in readme and "scripts/plot_dpo.py" in readme
