"""FireRed Edit, called directly on a tiny model: outputs, the batch rule, seeds, progress, interruption, errors."""

from __future__ import annotations

import pytest
import torch

from nodes.common import FireRedNodeError
from nodes.edit import FireRedEdit
from tests.node_fixtures import FakeComfy, Interrupted, image_tensor, tiny_model

SETTINGS = dict(negative_prompt=" ", steps=2, true_cfg_scale=4.0, seed=5, width=32, height=32)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _edit(model, **overrides):
    args = {"instruction": "make it blue", **SETTINGS, **overrides}
    return FireRedEdit().edit(model, **args)


def test_outputs_image_and_raw_latent(model) -> None:
    image, latent = _edit(model, image1=image_tensor(1, 40, 56))
    assert image.shape == (1, 32, 32, 3) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    samples = latent["samples"]
    # tiny VAE: 4 channels, 4x compression; ComfyUI's 5-D layout with one frame
    assert samples.shape == (1, 4, 1, 8, 8)
    vae = model.loaded.pipeline.vae
    assert not torch.allclose(samples[:, :, 0], vae.normalize(samples[:, :, 0]))  # raw, not normalised


def test_no_images_generates_from_text(model) -> None:
    image, _ = _edit(model)
    assert image.shape == (1, 32, 32, 3)


def test_automatic_size_follows_the_last_image(model) -> None:
    # output_area of the tiny pipeline is 64*64: a 2:1 image gives about 96x48 (multiples of 32 -> 96x32/96x64)
    image, _ = _edit(model, width=0, height=0, image1=image_tensor(1, 32, 32), image2=image_tensor(1, 32, 64))
    assert image.shape[2] > image.shape[1]


def test_a_side_the_model_cannot_make_is_refused_naming_the_nearest(model) -> None:
    with pytest.raises(FireRedNodeError, match=r"width=13 .*multiples of 8 px from 8 to 8192 \(nearest: 8 or 16\)"):
        _edit(model, width=13, height=0, image1=image_tensor(1, 32, 32))


def test_one_side_given_the_other_follows_the_image_aspect(model) -> None:
    image, _ = _edit(model, width=48, height=0, image1=image_tensor(1, 64, 32))  # 1:2 -> 48x96
    assert image.shape == (1, 96, 48, 3)
    image, _ = _edit(model, width=0, height=24, image1=image_tensor(1, 64, 32))
    assert image.shape == (1, 24, 16, 3)  # 12 px rounds to the 8-px token size: 16


def test_a_side_that_would_pass_the_limit_is_refused_before_any_work(model, monkeypatch) -> None:
    monkeypatch.setattr(type(model), "prepare", lambda self: pytest.fail("the model was prepared"))
    with pytest.raises(FireRedNodeError, match=r"width=8192 .*8192x16384.*limit of 8192 px"):
        _edit(model, width=8192, height=0, image1=image_tensor(1, 64, 32))


def test_batch_of_b_equals_b_single_runs_with_consecutive_seeds(model) -> None:
    batch = image_tensor(2, 32, 32, seed=3)
    shared = image_tensor(1, 32, 32, seed=4)
    images, latent = _edit(model, image1=batch, image2=shared)
    assert images.shape[0] == 2 and latent["samples"].shape[0] == 2
    for i in range(2):
        single, _ = _edit(model, image1=batch[i:i + 1], image2=shared, seed=SETTINGS["seed"] + i)
        assert torch.equal(single[0], images[i])
    assert not torch.equal(images[0], images[1])


def test_seed_changes_the_result(model) -> None:
    a, _ = _edit(model, seed=1)
    b, _ = _edit(model, seed=2)
    assert not torch.equal(a, b)


def test_mismatched_batches_are_refused(model) -> None:
    with pytest.raises(FireRedNodeError, match="image2 has 2"):
        _edit(model, image1=image_tensor(3, 32, 32), image2=image_tensor(2, 32, 32))


@pytest.mark.parametrize("bad", [torch.rand(32, 32, 3), torch.rand(1, 32, 32, 2), torch.rand(1, 3, 32, 32)])
def test_wrong_image_shapes_are_node_errors(model, bad) -> None:
    with pytest.raises(FireRedNodeError, match="image1"):
        _edit(model, image1=bad)


@pytest.mark.parametrize("field, value, message", [
    ("instruction", "  ", "instruction is empty"),
    ("steps", -1, "steps"),
    ("steps", 2.5, "steps"),
    ("true_cfg_scale", float("nan"), "true_cfg_scale"),
    ("true_cfg_scale", -1.5, "true_cfg_scale"),
    ("seed", -1, "seed"),
    ("seed", 2**64, "seed"),
    ("width", -16, "width"),
    ("height", 10**6, "height"),
    ("width", 4, r"width=4 is not a size this model can make.*nearest: 8\)"),  # the tiny model: 8-px tokens
    ("negative_prompt", 3, "negative_prompt"),
    ("keep_unedited", "always", "keep_unedited must be one of model default, on, off"),
    ("sampler", "ddim", "sampler must be one of model default, stochastic, euler"),
])
def test_bad_settings_are_node_errors(model, field: str, value, message: str) -> None:
    with pytest.raises(FireRedNodeError, match=message):
        _edit(model, **{field: value})


def test_keep_unedited_chooses_whether_picture_1_is_put_back(model) -> None:
    """The widget overrides the model's own setting (``pipeline.keep_unedited``) either way. With a threshold
    nothing reaches, no latent counts as edited, so 'kept' means the output is Picture 1 itself."""
    from firered_core.preserve import PreserveConfig

    source = image_tensor(1, 32, 32)
    pipeline = model.loaded.pipeline
    assert pipeline.keep_unedited is None  # not an embedded-default folder: off unless asked
    default_off, _ = _edit(model, image1=source)
    pipeline.keep_unedited = PreserveConfig(latent_threshold=1e9)
    try:
        outputs = {choice: _edit(model, image1=source, keep_unedited=choice)[0]
                   for choice in ("model default", "on", "off")}
    finally:
        pipeline.keep_unedited = None
    assert (outputs["model default"] - source).abs().max() <= 1 / 255 + 1e-6
    assert (outputs["on"] - source).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(outputs["off"], default_off) and (outputs["off"] - source).abs().max() > 0.1


def test_sampler_chooses_stochastic_or_euler_steps_for_this_edit_only(model) -> None:
    """'model default' follows the model's scheduler config (Euler for this tiny folder, re-noising when the config
    says so); the other choices override it for the call and leave the shared pipeline's config as it was."""
    from dataclasses import replace

    pipeline = model.loaded.pipeline
    assert pipeline.scheduler_config.stochastic_sampling is False
    runs = {choice: _edit(model, sampler=choice)[0] for choice in ("model default", "euler", "stochastic")}
    assert torch.equal(runs["model default"], runs["euler"])
    assert not torch.equal(runs["stochastic"], runs["euler"])
    assert torch.equal(_edit(model, sampler="stochastic")[0], runs["stochastic"])  # seeded: the same again
    assert pipeline.scheduler_config.stochastic_sampling is False
    config = pipeline.scheduler_config
    pipeline.scheduler_config = replace(config, stochastic_sampling=True)
    try:
        assert torch.equal(_edit(model)[0], runs["stochastic"])
        assert torch.equal(_edit(model, sampler="euler")[0], runs["euler"])
    finally:
        pipeline.scheduler_config = config


def test_steps_0_and_cfg_minus_1_are_the_models_own_settings(model, monkeypatch, tmp_path) -> None:
    """The widgets' defaults: the pipeline's ``default_steps`` / ``default_true_cfg_scale`` (what a folder's
    defaults.json sets), for the sampling and for the progress bar."""
    from nodes.edit import sampling_inputs
    from nodes.model_handle import FireRedModel, LoadedFireRed

    widgets = sampling_inputs()
    assert widgets["steps"][1]["default"] == 0 and widgets["true_cfg_scale"][1]["default"] == -1.0
    pipeline = model.loaded.pipeline
    assert (pipeline.default_steps, pipeline.default_true_cfg_scale) == (40, 4.0)  # no defaults.json: the release's
    monkeypatch.setattr(pipeline, "default_steps", 3)
    monkeypatch.setattr(pipeline, "default_true_cfg_scale", 1.0)
    explicit, _ = _edit(model, steps=3, true_cfg_scale=1.0)
    with FakeComfy.installed(monkeypatch, tmp_path) as comfy:
        own, _ = _edit(FireRedModel(LoadedFireRed.wrap(pipeline, "tiny")), steps=0, true_cfg_scale=-1.0)
        assert comfy.progress == [(i, 3) for i in range(1, 4)]
    assert torch.equal(own, explicit)
    assert not torch.equal(_edit(model, steps=0, true_cfg_scale=4.0)[0], explicit)  # CFG 4 is not the model's 1
    assert not torch.equal(_edit(model, steps=2, true_cfg_scale=-1.0)[0], explicit)  # 2 steps are not its 3


def test_not_a_model_is_a_node_error() -> None:
    with pytest.raises(FireRedNodeError, match="FIRERED_MODEL"):
        _edit("not a model")


def test_empty_negative_prompt_turns_true_cfg_off(model) -> None:
    encoder = model.loaded.pipeline.encoder
    encoder.calls.clear()
    _edit(model, negative_prompt="")
    assert [c[0] for c in encoder.calls] == ["make it blue"]


def test_progress_interruption_and_model_management(model, monkeypatch, tmp_path) -> None:
    from nodes.model_handle import FireRedModel, LoadedFireRed

    with FakeComfy.installed(monkeypatch, tmp_path) as comfy:
        managed = FireRedModel(LoadedFireRed.wrap(model.loaded.pipeline, "tiny"))
        patchers = managed.loaded.patchers
        # one patcher per component, each over its own container (the stub encoder has no weights)
        assert set(patchers) == {"transformer", "vae"}
        assert patchers["transformer"].model.transformer is model.loaded.pipeline.transformer
        assert patchers["vae"].model.vae is model.loaded.pipeline.vae
        _edit(managed, image1=image_tensor(2, 32, 32), steps=3)
        assert comfy.progress == [(i, 6) for i in range(1, 7)]  # one bar across both edits
        # each phase asks ComfyUI for its own component, never a forced full load: per edit the VAE (references),
        # the transformer (sampling), the VAE (decoding)
        order = [(patchers["vae"],), (patchers["transformer"],), (patchers["vae"],)]
        assert [tuple(models) for models, _ in comfy.loaded] == order * 2
        assert not any(full for _, full in comfy.loaded)

        comfy.polls, comfy.interrupt_after_polls = 0, 2
        with pytest.raises(Interrupted):  # ComfyUI's own exception, so it reports "interrupted"
            _edit(managed, steps=3)


@pytest.mark.parametrize("node, inputs", [
    ("FireRedEdit", {}),
    ("FireRedTextEdit", {"image": torch.rand(1, 32, 32, 3), "instruction": 'Write "HI"', "candidates": 1}),
    ("FireRedIdentityEdit", {"image": torch.rand(1, 32, 32, 3), "candidates": 1, "preserve_face": True,
                             "identity_weight": 0.5}),
    ("FireRedMultiImage", {"image1": torch.rand(1, 32, 32, 3), "max_composites": 3}),
])
def test_every_edit_node_offers_the_sampler_and_checks_it(node: str, inputs: dict) -> None:
    """The widget is an optional input of each edit node and reaches the shared settings (checked before any
    model work, so no model is needed to see the refusal)."""
    from nodes import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[node]
    assert "sampler" in cls.INPUT_TYPES()["optional"]
    args = {"instruction": "make it blue", **SETTINGS, **inputs, "sampler": "ddim"}
    with pytest.raises(FireRedNodeError, match="sampler must be one of"):
        cls().edit(None, **args)
