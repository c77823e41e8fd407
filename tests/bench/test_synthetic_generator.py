"""The synthetic generator: determinism, the held-out split, coverage, phrasing, the on-disk format."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from firered_train.data.readers import read_jsonl
from firered_bench import TASK_OPS, GeneratorConfig, SceneOptions, check, generate, write_dataset
from firered_bench.grade.checks import CheckThresholds
from firered_bench.cli import main as cli_main
from firered_bench.generate.generator import is_heldout, png_bytes
from firered_bench.scenes.palette import BACKGROUND_COLORS, CANVAS, OBJECT_COLORS, SHAPE_KINDS
from firered_bench.generate.phrasing import TEMPLATES
from firered_bench.scenes.render import render_scene, text_fits
from firered_bench.scenes.scene import Scene, Shape, scene_from_dict
from firered_bench.scenes.palette import WORDS

N_TASKS = len(TASK_OPS)


@pytest.fixture(scope="module")
def train_samples() -> list:
    return list(generate("train", N_TASKS * 12, seed=0))


def _digest(samples: list) -> list[tuple]:
    return [(s.id, s.task, s.op, s.instruction, s.instruction_cn, json.dumps(s.spec, sort_keys=True),
             png_bytes(s.target), tuple(png_bytes(x) for x in s.sources)) for s in samples]


def test_same_seed_same_samples_and_other_seed_differs(train_samples: list) -> None:
    again = list(generate("train", N_TASKS * 2, seed=0))
    assert _digest(again) == _digest(train_samples[: N_TASKS * 2])
    other = list(generate("train", N_TASKS * 2, seed=1))
    assert sum(a[6] == b[6] for a, b in zip(_digest(other), _digest(again))) < N_TASKS  # targets mostly differ


def test_heldout_is_disjoint_from_train_by_content(train_samples: list) -> None:
    held = list(generate("heldout", N_TASKS * 4, seed=0))
    held_fp = {s.spec["fingerprint"] for s in held}
    train_fp = {s.spec["fingerprint"] for s in train_samples}
    assert not held_fp & train_fp
    assert all(is_heldout(f, 10) for f in held_fp) and not any(is_heldout(f, 10) for f in train_fp)
    assert all(s.id.startswith("syn-heldout-0-") for s in held)


def test_every_category_and_op_is_produced_with_the_right_number_of_sources(train_samples: list) -> None:
    tasks = Counter(s.task for s in train_samples)
    assert tasks == {t: 12 for t in TASK_OPS}  # tasks cycle: balanced for any n that is a multiple
    ops = {s.op for s in train_samples}
    assert ops == {op for v in TASK_OPS.values() for op in v}
    for s in train_samples:
        want = 0 if s.op == "draw" else 2 if s.op == "insert" else 1
        assert len(s.sources) == want, s.op
        assert s.target.size == (64, 64) and all(x.size == (64, 64) for x in s.sources)


def test_spec_is_json_and_regions_lie_inside_the_canvas(train_samples: list) -> None:
    for s in train_samples:
        spec = json.loads(json.dumps(s.spec))
        assert spec["task"] == s.task and spec["op"] == s.op and spec["size"] == 64
        for x0, y0, x1, y1 in spec["regions"] or ():
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        for key in ("before", "after"):
            if isinstance(spec.get(key), dict):
                assert len(spec[key]["rgb"]) == 3 and len(spec[key]["bbox"]) == 4


def test_templates_are_many_and_instructions_are_fully_filled(train_samples: list) -> None:
    for op, (en, cn) in TEMPLATES.items():
        assert len(en) >= 5 and len(cn) >= 5, op
    ops = {op for v in TASK_OPS.values() for op in v}
    assert ops <= set(TEMPLATES)
    many = list(generate("train", N_TASKS * 40, seed=3))
    per_op: dict[str, set[str]] = {}
    for s in train_samples + many:
        assert not re.search(r"[\[\]{}|]", s.instruction + s.instruction_cn), s.instruction
        assert s.instruction[0].isupper() and re.search(r"[\u4e00-\u9fff]", s.instruction_cn)
        per_op.setdefault(s.op, set()).add(s.instruction.split(" ")[0] + " " + s.instruction.split(" ")[1])
    assert all(len(v) >= 3 for v in per_op.values()), {k: len(v) for k, v in per_op.items()}


def test_text_to_image_instruction_names_everything_drawn(train_samples: list) -> None:
    for s in (x for x in train_samples if x.op == "draw"):
        for shape in s.spec["shapes"]:
            assert OBJECT_COLORS[shape["color"]].en in s.instruction
            assert SHAPE_KINDS[shape["kind"]].en in s.instruction
        assert BACKGROUND_COLORS[s.spec["background"]["colors"][0]].en in s.instruction


def test_palette_families_are_separable_by_the_check_tolerance() -> None:
    tol = CheckThresholds().color_tol
    ts = np.linspace(0, 1, 51)
    for obj in OBJECT_COLORS.values():
        for a, b in itertools.product(BACKGROUND_COLORS.values(), repeat=2):
            mix = np.rint(np.outer(1 - ts, a.rgb) + np.outer(ts, b.rgb))
            assert np.abs(mix - np.array(obj.rgb)).max(axis=1).min() > tol, (obj.key, a.key, b.key)
    for a, b in itertools.combinations(OBJECT_COLORS.values(), 2):
        assert np.abs(np.array(a.rgb) - np.array(b.rgb)).max() > tol, (a.key, b.key)
    for bg in [*BACKGROUND_COLORS.values(), CANVAS]:
        for other in BACKGROUND_COLORS.values():
            if other != bg:  # a new background is always a visible change
                assert np.abs(np.array(bg.rgb) - np.array(other.rgb)).max() > CheckThresholds().unchanged_tol


@pytest.mark.parametrize("size", [32, 96])
def test_other_canvas_sizes_render_and_check(size: int) -> None:
    config = GeneratorConfig(scene=SceneOptions(size=size))
    for s in generate("train", N_TASKS, seed=5, config=config):
        assert s.target.size == (size, size)
        assert check(s.sources, s.target, s.spec).passed, (s.op, check(s.sources, s.target, s.spec).failures)


def test_scene_round_trips_and_rejects_bad_layouts() -> None:
    scene = Scene(64, shapes=(Shape("star", "red", 0), Shape("ring", "blue", 4, "large")))
    assert scene_from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    assert np.array_equal(np.asarray(render_scene(scene)), np.asarray(render_scene(scene_from_dict(scene.to_dict()))))
    with pytest.raises(ValueError):
        Scene(64, shapes=(Shape("star", "red", 0), Shape("ring", "blue", 0)))
    with pytest.raises(ValueError):
        Scene(60)
    with pytest.raises(ValueError):
        Shape("star", "beige", 0)  # shapes never take background colours
    assert all(text_fits(w, 64) for w in WORDS)


def test_write_dataset_is_read_by_read_jsonl_and_never_overwrites_silently(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    manifest = write_dataset(out, "heldout", N_TASKS, seed=2, size=64)
    records = read_jsonl(manifest)
    assert len(records) == N_TASKS and {r.task for r in records} == set(TASK_OPS)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert all("spec" in r and "op" in r for r in rows)
    by_id = {r.id: r for r in records}
    for sample in generate("heldout", N_TASKS, seed=2):
        _, target = by_id[sample.id].open_images()
        assert np.array_equal(np.asarray(target), np.asarray(sample.target))
    info = json.loads((out / "info.json").read_text())
    assert info["split"] == "heldout" and sum(info["tasks"].values()) == N_TASKS
    before = manifest.read_bytes()
    with pytest.raises(FileExistsError):
        write_dataset(out, "heldout", 2, seed=9)
    assert manifest.read_bytes() == before
    write_dataset(out, "train", 3, seed=9, overwrite=True)
    assert len(read_jsonl(out / "manifest.jsonl")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temporary folders left behind


def test_cli_writes_and_refuses_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert cli_main([str(out), "-n", "4", "--split", "train", "--size", "32"]) == 0
    assert len(read_jsonl(out / "manifest.jsonl")) == 4
    assert cli_main([str(out), "-n", "4"]) == 2
    assert cli_main([str(out), "-n", "2", "--overwrite"]) == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        next(generate("test", 1))
    with pytest.raises(ValueError):
        GeneratorConfig(tasks=("paint",))
    with pytest.raises(ValueError):
        SceneOptions(min_shapes=3, max_shapes=2)
