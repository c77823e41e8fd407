"""The consistency loss as a trainer stage: ``tiny_sft_consistency`` on drawn faces whose landmarks the manifest
gives (``tests.train_fixtures.make_face_pairs``: 96 px pictures fitted to 64 px buckets, every fourth sample
without a face) and a seeded tiny face-feature network written here.

Checked: landmarks follow the bucket fit; manifest landmarks parse (bad ones skip the sample); the config's errors
name their field; on a real batch of the trainer the term is nonzero exactly for face samples below sigma_max and
exactly 0 (no graph, bit-equal gradients) above it; it changes the transformer's gradients; a run logs it; resume
stays bit-exact with it on; a latent-cache run computes the same term as online encoding.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.config import ConfigError
from firered_train.cache.command import cache_from_config
from firered_train.config import load_config
from firered_train.data.buckets import Dims
from firered_train.data.pixels import fit_image, fit_points
from firered_train.data.readers.jsonl import read_jsonl
from firered_train.data.record import ImageRef
from firered_train.data.skips import SkipLog
from firered_train.loop.consistency_stage import CONSISTENCY_METRICS, FaceSource
from firered_train.loop.step import step_loss
from firered_train.loop.trainer import Trainer
from firered_train.objectives.face_alignment import template_points

from tests.train_fixtures import make_face_pairs, read_tensors, save_tiny_face_features


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest of 8 face edits, tiny face-feature file)."""
    root = tmp_path_factory.mktemp("faces")
    return make_face_pairs(root / "data", 8), save_tiny_face_features(root / "features.safetensors")


def overrides(faces: tuple[Path, Path], out: Path, steps: int, *extra: str) -> list[str]:
    manifest, features = faces
    return [f"--data.path={manifest}", f"--consistency.features_path={features}", f"--output_dir={out}",
            f"--schedule.max_steps={steps}", "--optim.warmup_steps=1", "--logging.validation_every=0",
            "--data.num_workers=0", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- landmarks ----------------------------------------------------------------------------------------------------


def test_fit_points_land_where_fit_image_puts_the_pixels() -> None:
    # a Gaussian blob at a sub-pixel spot of a 120 x 90 picture; fitted to 64 x 64 (scaled by 64/90, 21 columns
    # cropped off each side) its intensity centroid must sit where fit_points puts the spot
    yy, xx = np.mgrid[0:90, 0:120].astype(np.float64)
    spot = np.array([[70.3, 40.7]])
    blob = np.exp(-((xx - spot[0, 0]) ** 2 + (yy - spot[0, 1]) ** 2) / (2 * 4.0**2))
    fitted = np.asarray(fit_image(Image.fromarray((255 * blob).astype(np.uint8)).convert("RGB"), Dims(64, 64)),
                        dtype=np.float64)[..., 0]
    gy, gx = np.mgrid[0:64, 0:64]
    centroid = np.array([(gx * fitted).sum(), (gy * fitted).sum()]) / fitted.sum()
    moved = fit_points(spot, (120, 90), Dims(64, 64))[0]
    assert np.abs(moved - centroid).max() < 0.1, (moved, centroid)
    # by hand: scale 64/90, resized width ceil(120 * 64/90) = 86, left = (86 - 64) // 2 = 11
    assert moved[1] == pytest.approx((40.7 + 0.5) * 64 / 90 - 0.5)
    assert moved[0] == pytest.approx((70.3 + 0.5) * 86 / 120 - 0.5 - 11)


def test_manifest_landmarks_parse_and_bad_ones_skip_the_sample(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    rows = [{"id": "two", "target_image": "a.png", "instruction": "x", "target_landmarks": [[[10, 12], [20, 12.5]]]},
            {"id": "none", "target_image": "a.png", "instruction": "x"},
            {"id": "four", "target_image": "a.png", "instruction": "x", "target_landmarks": [[[1, 1]] * 4]},
            {"id": "text", "target_image": "a.png", "instruction": "x", "target_landmarks": [[["1", 2], [3, 4]]]},
            {"id": "flat", "target_image": "a.png", "instruction": "x", "target_landmarks": [1, 2]},
            {"id": "one", "target_image": "a.png", "instruction": "x", "target_landmarks": [[[3, 3], [3, 3]]]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    skips = SkipLog()
    records = read_jsonl(manifest, skips=skips)
    assert [r.id for r in records] == ["two", "none"]
    assert records[0].target_landmarks == (((10.0, 12.0), (20.0, 12.5)),) and records[1].target_landmarks == ()
    assert skips.counts == {"malformed": 4} and [sid for sid, _ in skips.recent] == ["four", "text", "flat", "one"]
    assert "target_landmarks[0] must be 2, 3 or 5 finite (x, y) points" in caplog.text
    assert "target_landmarks[0] must list [x, y] number pairs" in caplog.text
    assert "target_landmarks must be a list of faces" in caplog.text
    assert "target_landmarks[0] must not put all its points at one place" in caplog.text


def test_face_source_aligns_faces_in_bucket_pixels_and_drops_cut_off_ones(faces: tuple[Path, Path]) -> None:
    records = read_jsonl(faces[0])
    source = FaceSource(records, "manifest")
    dims, crop = Dims(64, 64), 16
    regions = source.regions(range(len(records)), dims, crop)
    assert [bool(r) for r in regions] == [i % 4 != 3 for i in range(8)]  # every fourth sample has no face
    for record, found in zip(records, regions):
        if found:
            (matrix,) = found
            eyes = fit_points(np.asarray(record.target_landmarks[0][:2]), record.target_size, dims)
            mapped = torch.as_tensor(eyes) @ matrix[:, :2].T + matrix[:, 2]
            # five points: a least-squares fit, so the eyes land near (not exactly on) the template's eyes
            assert (mapped - template_points(2, crop)).abs().max() < 1.0
    # a face whose eye lies beyond the bucket's crop (a 96 x 64 picture loses 16 px each side at 64 x 64) drops
    wide = replace(records[0], target=ImageRef(96, 64, path=records[0].target.path, name="wide"),
                   target_landmarks=(((5.0, 30.0), (40.0, 30.0)), ((30.0, 30.0), (60.0, 30.0))))
    (kept,) = FaceSource([wide], "manifest").regions([0], dims, crop)
    (second,) = FaceSource([replace(wide, target_landmarks=wide.target_landmarks[1:])], "manifest").regions(
        [0], dims, crop)
    assert len(kept) == 1 and torch.equal(kept[0], second[0])  # the second face only


# -- config errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,match", [
    (["--consistency.features_path=null"], r"^consistency\.features_path: must name the face-feature"),
    (["--consistency.features_path=arcface.pth"], r"^consistency\.features_path: must be a \.safetensors file"),
    (["--consistency.landmarks=guess"], r"^consistency\.landmarks: "),
    (["--consistency.sigma_max=1.5"], r"^consistency\.sigma_max: must be in \(0, 1\]"),
    (["--data.reader=folder"], r"^consistency\.landmarks: 'manifest' reads the target_landmarks of JSONL"),
])
def test_config_errors_name_the_field(faces: tuple[Path, Path], tmp_path: Path, extra: list[str],
                                      match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_sft_consistency", overrides(faces, tmp_path, 2, *extra))


def test_consistency_with_dpo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^consistency\.enabled: the consistency loss is added to the flow loss"):
        load_config("tiny_dpo", [f"--data.path={tmp_path / 'p.jsonl'}", "--consistency.enabled=true",
                                 f"--consistency.features_path={tmp_path / 'f.safetensors'}"])


def test_a_missing_or_unfit_feature_file_stops_the_run_before_it_loads(faces: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    missing = load_config("tiny_sft_consistency", overrides(faces, tmp_path, 2, "--consistency.features_path="
                                                            f"{tmp_path / 'absent.safetensors'}"))
    with pytest.raises(ConfigError, match=r"^consistency\.features_path: face-feature weights not found: .*absent"):
        Trainer(missing)
    unfit = load_config("tiny_sft_consistency", overrides(faces, tmp_path, 2, "--consistency.crop=32"))
    with pytest.raises(ConfigError, match=r"^consistency\.features_path: .* but a 32 crop gives 4 \(2x2\)"):
        Trainer(unfit)


# -- the term on the trainer's own batches -------------------------------------------------------------------------


def _mixed_batch(trainer: Trainer):
    """The first of the run's batches holding both face and no-face samples, its noise, and which have a face."""
    for micro, loaded in enumerate(trainer._batches(0)):
        batch = trainer._to_train_batch(loaded.batch)
        has_face = [bool(r) for r in trainer.consistency.faces.regions(batch.indices, Dims(64, 64), 16)]
        if any(has_face) and not all(has_face):
            return batch, trainer._draws(batch, micro)[1], has_face
    raise AssertionError("no batch mixes face and no-face samples")


def _grads(trainer: Trainer, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in trainer.transformer.parameters() if p.requires_grad]
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), params)]


def _step(trainer: Trainer, batch, noise: torch.Tensor, s: torch.Tensor):
    out = step_loss(trainer.model, batch, s, noise, trainer.cfg.objective, patch=trainer.patch)
    return out, trainer.consistency.term(batch, out)


@pytest.mark.slow
def test_term_is_nonzero_for_faces_below_sigma_max_and_exactly_zero_above(faces: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    trainer = Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path, 8)))
    batch, noise, has_face = _mixed_batch(trainer)
    for i in range(batch.size):  # only sample i below the cut-off: the term is nonzero iff it has a face
        s = torch.full((batch.size,), 0.95)
        s[i] = 0.5
        _, term = _step(trainer, batch, noise, s)
        assert (term.item() > 0) == has_face[i], (i, term.item())
    out, term = _step(trainer, batch, noise, torch.full((batch.size,), 0.9))  # at sigma_max: off
    assert term.item() == 0.0 and not term.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(_grads(trainer, out.loss + term), _grads(trainer, out.loss)))
    # below the cut-off the term reaches the transformer's parameters and changes the step's gradient
    out, term = _step(trainer, batch, noise, torch.full((batch.size,), 0.5))
    alone = _grads(trainer, term)
    assert sum(g.abs().sum() for g in alone) > 0
    with_term, without = _grads(trainer, out.loss + term), _grads(trainer, out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(with_term, without))
    assert all(torch.allclose(a, b + c, atol=1e-7) for a, b, c in zip(with_term, without, alone))


@pytest.mark.slow
def test_a_tiny_run_logs_the_term(faces: tuple[Path, Path], tmp_path: Path) -> None:
    Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path / "run", 4))).run()
    train = [r for r in _lines(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(set(CONSISTENCY_METRICS) <= r.keys() for r in train)
    assert any(r["consistency_loss"] > 0 for r in train) and all(r["consistency_loss"] >= 0 for r in train)
    share = sum(r["consistency_faces"] for r in train) / len(train)
    assert 0 < share < 1 and all(r["consistency_active"] <= r["consistency_faces"] for r in train)
    assert (tmp_path / "run" / "transformer.safetensors").is_file()


@pytest.mark.slow
def test_resume_is_bit_identical_with_the_term_on(faces: tuple[Path, Path], tmp_path: Path) -> None:
    common = ["--checkpoint.every_steps=2", "--checkpoint.keep_last=5", "--schedule.grad_accumulation=2"]
    Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path / "a", 4, *common))).run()
    Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path / "b", 2, *common))).run()
    Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path / "b", 4, *common,
                                                          "--checkpoint.resume=latest"))).run()
    for name in ("transformer.safetensors", "transformer_ema.safetensors"):
        a, b = read_tensors(tmp_path / "a" / name), read_tensors(tmp_path / "b" / name)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs from the uninterrupted run"
    la = [r for r in _lines(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [r for r in _lines(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert [(r["loss"], r["consistency_loss"]) for r in la] == [(r["loss"], r["consistency_loss"]) for r in lb]
    assert any(r["consistency_loss"] > 0 for r in la)


@pytest.mark.slow
def test_a_latent_cache_run_computes_the_term_of_online_encoding(faces: tuple[Path, Path], tmp_path: Path) -> None:
    # SIA's image drop and shuffle are off with a cache: switch them off online too, so both see the same batches
    same = ["--data.sia.image_drop_prob=0", "--data.sia.shuffle_prob=0", "--data.sia.text_drop_prob=0"]
    cached = load_config("tiny_sft_consistency", overrides(faces, tmp_path / "cached", 2, *same,
                                                           f"--data.cache_dir={tmp_path / 'cache'}"))
    assert cache_from_config(cached, batch_size=8, shard_size=8) > 0
    Trainer(cached).run()
    Trainer(load_config("tiny_sft_consistency", overrides(faces, tmp_path / "online", 2, *same))).run()
    a = [r for r in _lines(tmp_path / "cached" / "metrics.jsonl") if "loss" in r]
    b = [r for r in _lines(tmp_path / "online" / "metrics.jsonl") if "loss" in r]
    assert any(r["consistency_loss"] > 0 for r in a)
    for ra, rb in zip(a, b, strict=True):
        assert ra["consistency_faces"] == rb["consistency_faces"]
        # the cached latents equal the online ones to ~1e-6; 1 - cos of the tiny network's nearby embeddings is
        # ~1e-5, where float32's cosine (resolution ~6e-8 near 1) leaves it a relative rounding of about 0.5 %
        assert ra["consistency_loss"] == pytest.approx(rb["consistency_loss"], rel=2e-2)


def test_detected_faces_are_found_once_and_aligned_in_bucket_pixels(tmp_path: Path) -> None:
    pytest.importorskip("dlib", reason="face detection needs the 'face' extra")
    skdata = pytest.importorskip("skimage.data", reason="the face image comes from scikit-image")
    Image.fromarray(skdata.astronaut()).save(tmp_path / "astronaut.png")  # 512 x 512, one face
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "target_image": "astronaut.png", "instruction": "x"})
                                      + "\n" + json.dumps({"id": "b", "target_image": "astronaut.png",
                                                           "instruction": "x",
                                                           "target_landmarks": [[[10, 10], [30, 10]]]}) + "\n")
    records = read_jsonl(tmp_path / "m.jsonl")
    source = FaceSource(records, "manifest_or_detect")
    (eyes,) = source.faces(0)
    assert source.faces(0)[0] is eyes  # detected once, then remembered
    assert eyes.shape == (2, 2) and ((eyes > [150, 50]) & (eyes < [290, 190])).all()  # her face
    assert np.array_equal(source.faces(1)[0], [[10.0, 10.0], [30.0, 10.0]])  # the manifest's, where given
    assert FaceSource(records, "manifest").faces(0) == []
    (matrix,), _ = source.regions([0, 1], Dims(256, 256), 112)
    moved = torch.as_tensor(fit_points(eyes, (512, 512), Dims(256, 256)))
    torch.testing.assert_close(moved @ matrix[:, :2].T + matrix[:, 2], template_points(2, 112), atol=1e-9, rtol=0)


def test_the_loss_keeps_float32_precision_under_bf16_autocast(tmp_path: Path) -> None:
    from firered_train.config import ConsistencyConfig
    from firered_train.model.face_features import FaceFeatureConfig, load_face_features
    from firered_train.objectives.consistency import consistency_loss
    from tests.train_fixtures import TINY_FACE_SHAPE

    features = load_face_features(save_tiny_face_features(tmp_path / "f.safetensors"),
                                  FaceFeatureConfig(**TINY_FACE_SHAPE))
    torch.manual_seed(0)
    gt = (torch.rand(1, 3, 16, 16) * 2 - 1).bfloat16()
    estimate = (gt.float() + 0.05 * torch.randn(1, 3, 16, 16)).bfloat16()  # a bf16 decode near the truth
    identity = [[torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)]]
    config, s = ConsistencyConfig(eta=1.0, crop=16), torch.tensor([0.5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = consistency_loss(estimate, gt, identity, features, s, config)
    want = consistency_loss(estimate.float(), gt.float(), identity, features, s, config)
    # 1 - cos is ~1e-4 here: bfloat16 (resolution ~4e-3 near 1) would round it to 0
    assert 0 < want.loss.item() < 1e-2 and got.loss.dtype == torch.float32
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-5)
