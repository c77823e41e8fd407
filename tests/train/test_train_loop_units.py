"""Unit tests of the trainer's pieces that run without a model: image fitting, bad samples, the cache format,
the LR schedule, optimizers, CLI argument splitting, packaging of the subcommands, the FSDP plugin."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from firered_core.config import ConfigError
from firered_train.loop.batch import pad_conditions, placeholder_batch
from firered_train.cache.store import CachedSample, CacheError, CacheSpec, CacheWriter, LatentCache
from firered_train.cli import split_overrides
from firered_train.config import OptimConfig
from firered_train.data import BucketBatchSampler, BucketSamplerConfig, SIAConfig, SkipLog
from firered_train.data.buckets import BucketDims, Dims
from firered_train.scale.distributed import fsdp_plugin, sample_generator
from firered_train.loop.optim import build_lr_schedule, build_optimizer, lr_factor
from firered_train.data.pixels import fit_image, load_pixel_batch
from firered_train.data.records import read_records

from tests.train_fixtures import ROOT, make_pairs

SPEC = CacheSpec(max_area=4096, multiple=16, aspect_tolerance=0.02, latent_channels=4, compression=4, embed_dim=8,
                 latent_dtype="float32", vae_digest="abc")


@pytest.mark.parametrize("size,dims", [((100, 60), Dims(48, 80)), ((60, 100), Dims(96, 48)), ((64, 64), Dims(64, 64)),
                                       ((33, 17), Dims(16, 32))])
def test_fit_image_covers_then_centre_crops(size: tuple[int, int], dims: Dims) -> None:
    img = Image.new("RGB", size, (10, 20, 30))
    out = fit_image(img, dims)
    assert out.size == (dims.width, dims.height)
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_bad_samples_are_skipped_counted_and_an_all_bad_batch_is_a_zero_weight_placeholder(tmp_path: Path) -> None:
    make_pairs(tmp_path, 4)
    records = read_records("folder", str(tmp_path))
    sampler = BucketBatchSampler(records, BucketSamplerConfig(source_count_weights={1: 1.0}, max_area=4096,
                                                              pixels_per_token=8, token_budget=512))
    plan = sampler.next_plan()
    assert len(plan.indices) == 4
    (tmp_path / f"{records[plan.indices[0]].id}_target.png").unlink()  # vanished after listing
    skips = SkipLog()
    batch = load_pixel_batch(records, plan, SIAConfig(text_drop_prob=0.0), skips)
    assert batch.size == 3 and tuple(batch.target.shape) == (3, 3, 64, 64)
    assert skips.total == 1 and skips.recent[-1] == (records[plan.indices[0]].id, "missing_file")
    assert batch.target.min() >= -1 and batch.target.max() <= 1

    empty = placeholder_batch(plan, plan.dims.sources, channels=4, compression=4, embed_dim=8)
    assert empty.weight == 0.0 and tuple(empty.target.shape) == (1, 4, 16, 16)
    assert [tuple(s.shape) for s in empty.sources] == [(1, 4, 16, 16)]


def test_pad_conditions_masks_padding_and_drops_a_full_mask() -> None:
    embeds, mask = pad_conditions([torch.ones(3, 2), torch.ones(5, 2)])
    assert tuple(embeds.shape) == (2, 5, 2) and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert embeds[0, 3:].abs().sum() == 0
    assert pad_conditions([torch.ones(4, 2), torch.ones(4, 2)])[1] is None


def _sample(i: int) -> CachedSample:
    dims = BucketDims((Dims(64, 64),), Dims(64, 32))
    return CachedSample(id=f"s/{i}", dims=dims, target=torch.full((4, 16, 8), float(i)),
                        sources=(torch.full((4, 16, 16), -float(i)),), conds={"en": torch.randn(3 + i, 8)})


def test_cache_round_trip_resume_and_spec_check(tmp_path: Path) -> None:
    CacheWriter.write_manifest(tmp_path, SPEC)
    CacheWriter.write_null(tmp_path, torch.zeros(2, 8))
    writer = CacheWriter(tmp_path, SPEC, shard_size=2)
    samples = [_sample(i) for i in range(5)]
    for s in samples[:3]:
        writer.add(s)
    writer.flush()
    again = CacheWriter(tmp_path, SPEC, shard_size=2)  # a rerun appends shards after the existing ones
    for s in samples[3:]:
        again.add(s)
    again.flush()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    cache = LatentCache(tmp_path)
    assert len(cache) == 5 and sorted(cache.ids()) == sorted(s.id for s in samples)
    for s in samples:
        got = cache[s.id]
        assert got.dims == s.dims and torch.equal(got.target, s.target) and torch.equal(got.sources[0], s.sources[0])
        assert torch.equal(got.conds["en"], s.conds["en"])
    assert tuple(cache.null_embeds.shape) == (2, 8)
    cache.check(SPEC)
    with pytest.raises(CacheError, match="max_area"):
        cache.check(CacheSpec(**{**SPEC.__dict__, "max_area": 1024}))
    with pytest.raises(CacheError, match="other settings"):
        CacheWriter.write_manifest(tmp_path, CacheSpec(**{**SPEC.__dict__, "embed_dim": 16}))
    with pytest.raises(CacheError, match="not a training cache"):
        LatentCache(tmp_path / "nowhere")


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=4, lr_schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(step, cfg, 14) for step in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[-1] > 0.1
    assert lr_factor(14, cfg, 14) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    linear = OptimConfig(lr=1.0, lr_schedule="linear")
    assert lr_factor(5, linear, 10) == pytest.approx(0.5)
    param = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([param], cfg, torch.device("cpu"))
    sched = build_lr_schedule(opt, cfg, 14)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.25, 0.5, 0.75]


def test_optimizers_adamw_defaults_adafactor_and_8bit_needs_cuda() -> None:
    param = torch.nn.Parameter(torch.ones(4, 4))
    adamw = build_optimizer([param], OptimConfig(), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.9, 0.999) and adamw.param_groups[0]["weight_decay"] == 0.01
    small = build_optimizer([param], OptimConfig(optimizer="adafactor", lr=0.1), torch.device("cpu"))
    param.grad = torch.ones(4, 4)
    small.step()
    assert float(param.detach().max()) < 1.0
    state = small.state[param]
    assert sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor)) < 16  # factored: rows + columns
    with pytest.raises(ConfigError, match="CUDA"):
        build_optimizer([param], OptimConfig(optimizer="adamw8bit"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="nothing to train"):
        build_optimizer([], OptimConfig(), torch.device("cpu"))


def test_cli_splits_overrides_and_command_options() -> None:
    overrides, found = split_overrides(["--optim.lr=1e-4", "--output_dir=x", "--resume", "latest"])
    assert overrides == ["--optim.lr=1e-4", "--output_dir=x", "--checkpoint.resume=latest"]
    assert found == {"resume": "latest"}
    overrides, found = split_overrides(["--batch-size=4", "--data.path=p", "--shard-size", "9"],
                                       ("batch-size", "shard-size"))
    assert overrides == ["--data.path=p"] and found == {"batch-size": "4", "shard-size": "9"}
    for bad in (["positional"], ["--resume"], ["--flag"]):
        with pytest.raises(ValueError):
            split_overrides(bad)


def test_train_and_cache_are_registered_as_firered_subcommands() -> None:
    """The dispatcher (firered_core.cli) finds subcommands through this entry-point group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    commands = project.get("entry-points", {}).get("firered.commands", {})
    assert commands.get("train") == "firered_train.cli:register_train"
    assert commands.get("cache") == "firered_train.cli:register_cache"


def test_fsdp_plugin_wraps_each_block_and_keeps_original_parameters() -> None:
    plugin = fsdp_plugin()
    assert plugin.transformer_cls_names_to_wrap == ["DualStreamBlock"] and plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    fsdp1 = fsdp_plugin(version=1)
    assert fsdp1.use_orig_params  # frozen base + trainable adapters in one flat parameter need it


def test_sample_generators_depend_on_step_and_sample_only() -> None:
    a = torch.randn(3, generator=sample_generator(0, 5, 7, "noise"))
    assert torch.equal(a, torch.randn(3, generator=sample_generator(0, 5, 7, "noise")))
    assert not torch.equal(a, torch.randn(3, generator=sample_generator(0, 5, 8, "noise")))
    assert not torch.equal(a, torch.randn(3, generator=sample_generator(0, 6, 7, "noise")))
