"""FireRed Train LoRA called directly, as ComfyUI would: tiny model, stand-in ComfyUI, under inference mode.

Training runs use the 'tiny' model of tests/node_fixtures.py (loaded under ``torch.inference_mode()`` like a
loader node's output, so its weights are inference tensors) and 64 px colour-swap pairs from
tests/train_fixtures.py; each run is at most 4 steps with 2-step previews. Bad inputs are checked to fail with a
``FireRedNodeError`` before anything is written.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from firered_core.loading import open_weights
from firered_core.lora import apply_lora, list_loras
from firered_core.transformer import FireRedTransformer
from nodes.common import FireRedNodeError
from nodes.lora_loader import FireRedLoraLoader
from nodes.train_lora import FireRedTrainLoRA
from tests.node_fixtures import TINY, FakeComfy, Interrupted, image_tensor, tiny_model
from tests.train_fixtures import make_pairs

ADAPTED_LAYERS = 24  # the default targets in the tiny preset's 2 blocks


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs") / "train", 4)


class Comfy:
    """FakeComfy plus the output folder and the progress-text channel the training node uses."""

    def __init__(self, fake: FakeComfy, root: Path) -> None:
        self.fake, self.root = fake, root
        self.texts: list[tuple[str, str]] = []  # (node id, progress text)
        self.previews: list[tuple[int, Any]] = []  # (step, preview tuple) of progress updates with a preview
        self.stop_in_progress_at: int | None = None  # ComfyUI's progress hook raises on an interrupt too

    @property
    def loras(self) -> Path:
        return self.fake.folder("loras")

    @property
    def runs(self) -> Path:
        return self.root / "output" / "firered_lora_runs"

    def written(self) -> list[str]:
        """Every file under the loras and output folders, relative to the root."""
        return sorted(p.relative_to(self.root).as_posix() for base in (self.loras, self.root / "output")
                      if base.exists() for p in base.rglob("*") if p.is_file())


@pytest.fixture
def comfy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Comfy]:
    with FakeComfy.installed(monkeypatch, tmp_path) as fake:
        env = Comfy(fake, tmp_path)
        monkeypatch.setattr(sys.modules["folder_paths"], "get_output_directory",
                            lambda: str(tmp_path / "output"), raising=False)
        server = types.ModuleType("server")
        server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(
            send_progress_text=lambda text, node_id: env.texts.append((node_id, text))))
        monkeypatch.setitem(sys.modules, "server", server)

        class ProgressBar:
            def __init__(self, total: int) -> None:
                self.total = total

            def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
                fake.progress.append((value, total if total is not None else self.total))
                if value == env.stop_in_progress_at:
                    raise Interrupted()
                if preview is not None:
                    env.previews.append((value, preview))

        monkeypatch.setattr(sys.modules["comfy.utils"], "ProgressBar", ProgressBar)
        yield env


@pytest.fixture
def model() -> Any:
    with torch.inference_mode():  # as ComfyUI runs the loader node
        return tiny_model()


def train(model: Any, pairs: Path | None, **inputs: Any) -> tuple[str, torch.Tensor, torch.Tensor, Any]:
    values: dict[str, Any] = dict(
        data_folder=str(pairs) if pairs is not None else "", instructions="", steps=3, learning_rate=1e-3, rank=4,
        alpha=4.0, resolution=64, batch_size=2, seed=0, lora_name="tiny", resume=False, overwrite=False,
        preview_steps=2, checkpoint_every=100, unique_id="7")
    values.update(inputs)
    with torch.inference_mode():  # as ComfyUI runs every node
        return FireRedTrainLoRA().train(model, **values)


def tensors(path: Path | str) -> dict[str, torch.Tensor]:
    with open_weights(path) as src:
        return {k: src.get(k) for k in src.keys()}


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.loaded.pipeline.transformer.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trains_a_lora_that_loads_with_every_key_matched(comfy: Comfy, model: Any, pairs: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "accelerate", None)  # ComfyUI does not ship it: training must not need it
    before = snapshot(model)
    path, curve, preview, with_lora = train(model, pairs, lora_name="colour swap")

    assert Path(path) == comfy.loras / "colour swap.safetensors"
    assert [p.name for p in comfy.loras.iterdir()] == ["colour swap.safetensors"]  # no temporary file left
    assert tensors(path).keys() == tensors(comfy.runs / "colour swap" / "lora.safetensors").keys()
    for image in (curve, preview):
        assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert preview.shape[1] >= 64 and preview.shape[2] >= 3 * 64  # source | result | target

    # the shared model is handed back as it came: same weights, no adapters, inference still works
    transformer = model.loaded.pipeline.transformer
    assert list_loras(transformer) == {}
    after = snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not transformer.training

    with torch.inference_mode():
        stacked, report = FireRedLoraLoader().load_lora(model, "colour swap.safetensors", 1.0)
    assert "every key matched" in report and f"{ADAPTED_LAYERS} layers changed" in report
    # the model output: the input view plus the new LoRA at strength 1, the same as loading the file
    assert with_lora.loaded is model.loaded and model.loras == ()
    assert [(spec.path, spec.strength) for spec in with_lora.loras] == [(path, 1.0)]
    with torch.inference_mode():
        with_lora.prepare()
        assert list(list_loras(transformer).values()) == [1.0]
        assert with_lora.lora_report(with_lora.loras[0]).unmatched == []
        model.prepare()  # the input view runs without it again
    assert list_loras(transformer) == {}
    fresh = FireRedTransformer(TINY.transformer)
    core_report = apply_lora(fresh, path)
    assert core_report.unmatched == [] and core_report.applied == ADAPTED_LAYERS

    assert comfy.fake.progress[-1] == (3, 3)
    (step, (kind, image, size)), = comfy.previews  # the end-of-run sample (the baseline comes before step 1)
    assert (step, kind, size) == (3, "JPEG", 512) and image.size == (preview.shape[2], preview.shape[1])
    steps_shown = [text for node, text in comfy.texts if node == "7"]
    assert len(steps_shown) == 3 and steps_shown[-1].startswith("step 3/3 · loss ")


@pytest.mark.slow
def test_trains_on_image_inputs_and_overwrites_only_when_asked(comfy: Comfy, model: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "temp"  # the node's pairs folder goes to the temp folder: this test's own, never the machine's
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    sources, targets = image_tensor(2, 64, 64, seed=1), image_tensor(2, 64, 64, seed=2)
    inputs = dict(source_images=sources, target_images=targets, instructions="make it brighter\nmake it darker",
                  steps=2, lora_name="from_images")
    path, _, _, _ = train(model, None, **inputs)
    first = tensors(path)
    assert not list(temp.glob("firered-lora-pairs-*"))  # pairs folder removed

    with pytest.raises(FireRedNodeError, match="from_images.safetensors' already exists"):
        train(model, None, **inputs)
    assert tensors(path).keys() == first.keys() and all(torch.equal(tensors(path)[k], first[k]) for k in first)

    path, _, _, _ = train(model, None, **{**inputs, "overwrite": True, "seed": 5, "instructions": "make it blue"})
    second = tensors(path)
    assert any(not torch.equal(second[k], first[k]) for k in first), "overwrite left the old LoRA"


@pytest.mark.slow
def test_broken_pairs_are_skipped_and_counted(comfy: Comfy, model: Any, tmp_path: Path) -> None:
    folder = make_pairs(tmp_path / "mixed", 4)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken_target.png").write_bytes(b"not a png either")
    (folder / "broken.txt").write_text("make it work", encoding="utf-8")
    train(model, folder, steps=1, lora_name="mixed")
    assert (comfy.loras / "mixed.safetensors").is_file()
    assert "1 broken pairs skipped" in comfy.texts[-1][1]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["poll", "progress"])
def test_interrupt_stops_within_one_step_and_writes_no_lora(comfy: Comfy, model: Any, pairs: Path,
                                                            where: str) -> None:
    before = snapshot(model)
    if where == "poll":
        comfy.fake.interrupt_after_polls = 2  # the cancel hook is polled before every step: steps 1 and 2 run
    else:
        comfy.stop_in_progress_at = 2  # raised while step 2 is reported
    with pytest.raises(Interrupted):
        train(model, pairs, steps=4, lora_name="stopped")
    assert max(value for value, _ in comfy.fake.progress) == 2
    assert not any(comfy.loras.iterdir()), "an interrupted run left a LoRA file"
    checkpoints = sorted(p.name for p in (comfy.runs / "stopped" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000002"]  # saved at the interrupt, not at checkpoint_every (100)
    transformer = model.loaded.pipeline.transformer
    assert list_loras(transformer) == {} and all(torch.equal(snapshot(model)[k], v) for k, v in before.items())


@pytest.mark.slow
def test_a_run_stopped_before_its_first_step_leaves_nothing(comfy: Comfy, model: Any, pairs: Path) -> None:
    comfy.fake.interrupt_after_polls = 0
    with pytest.raises(Interrupted):
        train(model, pairs, lora_name="never")
    assert comfy.written() == []
    assert list_loras(model.loaded.pipeline.transformer) == {}


@pytest.mark.slow
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(comfy: Comfy, model: Any, pairs: Path) -> None:
    straight, _, _, _ = train(model, pairs, steps=4, lora_name="straight")

    comfy.fake.interrupt_after_polls = comfy.fake.polls + 2
    with pytest.raises(Interrupted):
        train(model, pairs, steps=4, lora_name="resumed")
    comfy.fake.interrupt_after_polls = None
    with pytest.raises(FireRedNodeError, match="other settings.*learning_rate"):
        train(model, pairs, steps=4, lora_name="resumed", resume=True, learning_rate=2e-3)
    with pytest.raises(FireRedNodeError, match="has checkpoints up to step 2"):
        train(model, pairs, steps=4, lora_name="resumed")
    with pytest.raises(FireRedNodeError, match="already at step 2"):
        train(model, pairs, steps=1, lora_name="resumed", resume=True)
    resumed, curve, _, _ = train(model, pairs, steps=4, lora_name="resumed", resume=True)

    a, b = tensors(straight), tensors(resumed)
    assert a.keys() == b.keys() and len(a) == 3 * ADAPTED_LAYERS
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"
    assert curve.shape[0] == 1

    # a stop during the last step's progress report leaves a finished checkpoint: resuming at it only exports
    Path(resumed).unlink()
    again, _, preview, _ = train(model, pairs, steps=4, lora_name="resumed", resume=True)
    assert all(torch.equal(a[k], v) for k, v in tensors(again).items())
    assert preview.shape[2] >= 3 * 64  # the run's last sample grid


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: a clear error, nothing written
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("../../x", "without folders"), ("a/b", "without folders"), ("a\\b", "without folders"),
    ("/srv/loras/x", "without folders"), ("", "lora_name is empty"), ("   ", "lora_name is empty"),
    ("..", "may not contain '..'"), ("x..y", "may not contain '..'"), ("bad\x01name", "control characters"),
    ("con", "reserved device name"), ("NUL.safetensors", "reserved device name"), (".hidden", "start with a dot"),
    ("what?", "characters file systems refuse"), (".safetensors", "start with a dot"), ("x" * 300, "too long"),
])
def test_bad_lora_names_are_refused(comfy: Comfy, model: Any, pairs: Path, name: str, message: str) -> None:
    with pytest.raises(FireRedNodeError, match=message):
        train(model, pairs, lora_name=name)
    assert comfy.written() == []


def _bad(comfy: Comfy, model: Any, pairs: Path | None, message: str, **inputs: Any) -> None:
    with pytest.raises(FireRedNodeError, match=message):
        train(model, pairs, **inputs)
    assert comfy.written() == []


def test_bad_training_data_is_refused(comfy: Comfy, model: Any, pairs: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"b{i}.png").write_bytes(b"\x89PNG garbage")
        (broken / f"b{i}_target.png").write_bytes(b"")
        (broken / f"b{i}.txt").write_text("edit", encoding="utf-8")
    _bad(comfy, model, empty, "holds no pairs")
    _bad(comfy, model, tmp_path / "missing", "does not exist")
    _bad(comfy, model, broken, "all 3 pairs found are broken")
    _bad(comfy, model, None, "no training data")
    _bad(comfy, model, pairs / "p000.png", "is not a folder")


def test_bad_image_inputs_are_refused(comfy: Comfy, model: Any, pairs: Path) -> None:
    two, three = image_tensor(2, 64, 64), image_tensor(3, 64, 64)
    _bad(comfy, model, None, "source_images has 2 images but target_images has 3", source_images=two,
         target_images=three, instructions="edit")
    _bad(comfy, model, None, "instructions is empty", source_images=two, target_images=two, instructions=" \n ")
    _bad(comfy, model, None, "3 lines for 2 pairs", source_images=two, target_images=two, instructions="a\nb\nc")
    _bad(comfy, model, None, "target_images is not connected", source_images=two, instructions="edit")
    _bad(comfy, model, pairs, "not both", source_images=two, target_images=two, instructions="edit")
    _bad(comfy, model, None, "3 channels", source_images=torch.rand(2, 64, 64, 2), target_images=two,
         instructions="edit")


@pytest.mark.parametrize("inputs, message", [
    ({"steps": 0}, "steps must be an integer"), ({"learning_rate": 0.0}, "learning_rate must be"),
    ({"rank": 0}, "rank must be"), ({"alpha": -1.0}, "alpha must be"), ({"batch_size": 0}, "batch_size must be"),
    ({"warmup_steps": 9}, "warmup_steps .9. exceeds steps"), ({"lr_schedule": "step"}, "lr_schedule must be"),
    ({"resume": True}, "has no checkpoint"),
])
def test_bad_settings_are_refused(comfy: Comfy, model: Any, pairs: Path, inputs: dict, message: str) -> None:
    _bad(comfy, model, pairs, message, **inputs)


def test_an_existing_lora_is_never_overwritten_silently(comfy: Comfy, model: Any, pairs: Path) -> None:
    existing = comfy.loras / "mine.safetensors"
    existing.write_bytes(b"precious")
    with pytest.raises(FireRedNodeError, match="mine.safetensors' already exists"):
        train(model, pairs, lora_name="mine")
    assert existing.read_bytes() == b"precious"
    assert not comfy.runs.exists()


def test_model_must_be_a_firered_model(comfy: Comfy, pairs: Path) -> None:
    _bad(comfy, object(), pairs, "expected a FIRERED_MODEL")


def test_outside_comfyui_the_lora_folder_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                     model: Any, pairs: Path) -> None:
    monkeypatch.delenv("FIRERED_LORA_DIR", raising=False)
    with pytest.raises(FireRedNodeError, match="FIRERED_LORA_DIR"):
        train(model, pairs)
    monkeypatch.setenv("FIRERED_LORA_DIR", "relative/dir")
    with pytest.raises(FireRedNodeError, match="absolute path"):
        train(model, pairs)
