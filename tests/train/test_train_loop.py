"""End-to-end tiny training runs on the CPU: SFT and LoRA on synthetic edit pairs, from a real offline cache.

The pairs (tests/train_fixtures.py) turn a red square blue or green as the instruction says. Held-out pairs come
from another seed. The model is the 'tiny' preset with a random init (transformer, VAE and a random tiny
Qwen2.5-VL encoder), so "learning" here means fitting this distribution from scratch; the held-out loss must
fall clearly. The LoRA run's export must load into a fresh model with firered_core.lora.apply_lora, every key
matched, and reproduce the trained model's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from firered_core.lora import apply_lora, list_loras
from firered_core.loading import open_weights
from firered_train.cache.command import cache_from_config
from firered_train.config import ModelConfig, load_config
from firered_train.model.components import build_components
from firered_train.loop.trainer import Trainer

from tests.train_fixtures import make_pairs, tiny_overrides


@pytest.fixture(scope="module")
def cached_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train (16) and held-out (4) pairs, cached once with the tiny random model (seed 0)."""
    root = tmp_path_factory.mktemp("tiny_pairs")
    make_pairs(root / "train", 16)
    make_pairs(root / "val", 4, seed=99)
    cfg = load_config("tiny_sft", tiny_overrides(root, steps=10))
    assert cache_from_config(cfg, batch_size=8, shard_size=8) == 20
    return root


def _run(root: Path, name: str, config: str, steps: int, extra: list[str]) -> tuple[Trainer, object]:
    overrides = tiny_overrides(root, steps=steps, extra=[f"--output_dir={root / name}",
                                                         f"--logging.validation_every={steps // 2}", *extra])
    trainer = Trainer(load_config(config, overrides))
    return trainer, trainer.run()


@pytest.mark.slow
def test_tiny_sft_heldout_loss_falls(cached_data: Path) -> None:
    trainer, result = _run(cached_data, "sft", "tiny_sft", 30, ["--optim.lr=2e-3"])
    (first_step, first), (last_step, last) = result.val_losses[0], result.val_losses[-1]
    assert (first_step, last_step) == (0, 30)
    assert last < 0.6 * first, f"held-out loss {first:.4f} -> {last:.4f}"
    out = cached_data / "sft"
    for name in ("loss_curve.png", "config.yaml", "metrics.jsonl", "transformer.safetensors",
                 "samples/step-000030.png", "checkpoints/latest"):
        assert (out / name).exists(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == list(range(1, 31))
    assert any(k.startswith("loss_by_t/") for k in train_lines[-1])


@pytest.mark.slow
def test_tiny_lora_run_exports_a_lora_that_firered_core_loads(cached_data: Path) -> None:
    trainer, result = _run(cached_data, "lora", "tiny_lora", 30, ["--optim.lr=3e-3", "--lora.rank=8"])
    first, last = result.val_losses[0][1], result.val_losses[-1][1]
    assert last < 0.9 * first, f"held-out loss {first:.4f} -> {last:.4f}"
    path = cached_data / "lora" / "lora.safetensors"
    assert path in result.exported
    with open_weights(path) as src:
        keys = src.keys()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)

    fresh = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer
    report = apply_lora(fresh, path)
    trained = trainer.transformer.eval()
    n_adapters = sum(1 for k in keys if k.endswith(".lora_down.weight"))
    assert report.unmatched == [] and report.applied == n_adapters == 2 * 12
    assert list(list_loras(fresh)) == ["lora"]

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 64 + 64, 16, generator=gen)
    text = torch.randn(1, 7, 32, generator=gen)
    args = (x, text, None, torch.tensor([0.5]), [(1, 8, 8), (1, 8, 8)])
    with torch.no_grad():
        assert torch.allclose(fresh(*args), trained(*args), atol=1e-5)
        fresh_base = build_components(ModelConfig(preset="tiny"), seed=0, load_encoder=False).transformer
        assert not torch.allclose(fresh_base(*args), trained(*args), atol=1e-4), "the LoRA changed nothing"


@pytest.mark.slow
def test_training_from_the_cache_sees_exactly_what_online_encoding_gives(cached_data: Path) -> None:
    """The cache is an exact stand-in: same latents, same condition, same null condition."""
    from firered_train.loop.batch import NullCondition, encode_pixel_batch
    from firered_train.cache.store import LatentCache
    from firered_train.data import BucketBatchSampler, SIAConfig
    from firered_train.loop.loader import StepDataset
    from firered_train.data.records import read_records

    cfg = load_config("tiny_sft", tiny_overrides(cached_data, steps=10))
    comps = build_components(cfg.model, seed=cfg.seed)
    records = read_records("folder", str(cached_data / "train"))
    sampler = BucketBatchSampler(records, cfg.data.sampler)
    sia = SIAConfig(image_drop_prob=0.0, shuffle_prob=0.0, text_drop_prob=0.5)  # some texts dropped
    cache = LatentCache(cached_data / "cache")
    null = NullCondition(comps.encoder)
    seen_null = False
    for _ in range(3):
        plan = sampler.next_plan()
        cached = StepDataset(records, sia, cache)[plan].batch
        online = encode_pixel_batch(StepDataset(records, sia)[plan].batch, comps.vae, comps.encoder, null,
                                    device=torch.device("cpu"))
        assert cached.ids == online.ids and cached.languages == online.languages
        seen_null |= "null" in cached.languages
        assert torch.allclose(cached.target, online.target, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cached.sources, online.sources))
        assert cached.embeds.shape == online.embeds.shape
        assert torch.allclose(cached.embeds, online.embeds, atol=1e-4)
    assert seen_null
    assert torch.allclose(cache.null_embeds, null.embeds, atol=1e-6)


@pytest.mark.slow
def test_bf16_autocast_gradient_checkpointing_and_adafactor_train(cached_data: Path) -> None:
    """The memory-saving switches together: bf16 compute, recomputed activations, factored optimizer state."""
    extra = ["--precision=bf16", "--model.gradient_checkpointing=true", "--optim.optimizer=adafactor",
             "--optim.lr=1e-2", "--schedule.grad_accumulation=2", "--logging.n_val_samples=0"]
    trainer, result = _run(cached_data, "bf16", "tiny_sft", 10, extra)
    assert trainer.transformer.gradient_checkpointing
    assert isinstance(trainer.optimizer.optimizer, torch.optim.Adafactor)
    assert all(torch.isfinite(torch.tensor(v)) for _, v in result.val_losses)
    assert result.val_losses[-1][1] < result.val_losses[0][1]


@pytest.mark.slow
def test_held_out_loss_is_also_logged_per_task(tmp_path: Path) -> None:
    make_pairs(tmp_path / "train", 8)
    for task, seed in (("first", 5), ("second", 6)):  # the folder reader's task label is the first sub-folder
        make_pairs(tmp_path / "val" / task, 2, seed=seed, prefix=task)
    overrides = tiny_overrides(tmp_path, steps=2, cache=False,
                               extra=["--logging.validation_every=2", "--optim.warmup_steps=1"])
    Trainer(load_config("tiny_sft", overrides)).run()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 2]
    for record in val:
        per_task = {k: v for k, v in record.items() if k.startswith("val_loss/")}
        assert sorted(per_task) == ["val_loss/first", "val_loss/second"]
        assert record["val_loss"] == pytest.approx(sum(per_task.values()) / 2, rel=1e-5)  # two samples each
    assert val[0]["val_loss/first"] != val[1]["val_loss/first"]  # the weights changed in between


def test_loss_by_task_groups_and_checks_lengths() -> None:
    from types import SimpleNamespace

    from firered_train.loop.validation import loss_by_task

    samples = [SimpleNamespace(task=t) for t in ("remove", "add", "remove")]
    assert loss_by_task(samples, [1.0, 4.0, 3.0]) == {"add": 4.0, "remove": 2.0}
    with pytest.raises(ValueError, match="3 samples but 2 losses"):
        loss_by_task(samples, [1.0, 2.0])
