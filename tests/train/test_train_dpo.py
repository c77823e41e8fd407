"""DPO with asymmetric gradients: the loss by hand and against plain Diffusion-DPO, its gradients, the config checks,
the pair losses (shared noise and level, both kinds of reference) and the preference manifest reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from firered_core import ops
from firered_core.config import ConfigError
from firered_core.lora import add_trainable_lora
from firered_train.config import ObjectiveConfig
from firered_train.data.preference import PreferenceRecord, read_preferences
from firered_train.data.skips import SkipLog
from firered_train.loop.batch import TrainBatch
from firered_train.loop.pair_step import pair_losses
from firered_train.loop.step import flow_losses, seeded_noise
from firered_train.objectives import DPOConfig, dpo_loss


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ---------------------------------------------------------------- the loss by hand


def test_plain_dpo_one_pair_by_hand() -> None:
    # L_w = 0.5, L_w_ref = 0.7 -> diff_w = -0.2; L_l = 0.9, L_l_ref = 0.6 -> diff_l = 0.3
    # margin = 1 * (0.3 - 1 * (-0.2)) = 0.5; -log sigmoid(0.5) = log(1 + e^-0.5) = log(1.6065307) = 0.4740770
    terms = dpo_loss(_t(0.5), _t(0.9), _t(0.7), _t(0.6), DPOConfig(beta=1.0))
    assert terms.loss.item() == pytest.approx(0.4740770, abs=1e-6)
    assert terms.reward_margin.item() == pytest.approx(0.5, abs=1e-6)
    assert terms.accuracy.item() == 1.0


def test_asymmetric_dpo_two_pairs_by_hand() -> None:
    cfg = DPOConfig(beta=2.0, omega=3.0, sft_weight=0.5)
    # pair 1: diff_w = 0.5 - 0.7 = -0.2, diff_l = 0.9 - 0.6 = 0.3
    #   margin = 2 * (0.3 - 3 * (-0.2)) = 1.8; log(1 + e^-1.8) = log(1.1652989) = 0.1529776; + 0.5 * 0.5 = 0.4029776
    # pair 2: diff_w = 1.0 - 0.9 = 0.1, diff_l = 1.0 - 1.2 = -0.2
    #   margin = 2 * (-0.2 - 3 * 0.1) = -1.0; log(1 + e^1) = 1.3132617; + 0.5 * 1.0 = 1.8132617
    # mean = (0.4029776 + 1.8132617) / 2 = 1.1081197
    terms = dpo_loss(_t(0.5, 1.0), _t(0.9, 1.0), _t(0.7, 0.9), _t(0.6, 1.2), cfg)
    assert terms.loss.item() == pytest.approx(1.1081197, abs=1e-6)
    assert math.log1p(math.exp(-1.8)) + 0.25 == pytest.approx(0.4029776, abs=1e-7)  # the arithmetic above
    # logged: means of the losses and differences; reward margin without omega: 2 * (0.3 + 0.2) = 1.0 and
    # 2 * (-0.2 - 0.1) = -0.6, mean 0.2; one of two pairs positive
    assert terms.loss_w.item() == pytest.approx(0.75) and terms.loss_l.item() == pytest.approx(0.95)
    assert terms.diff_w.item() == pytest.approx(-0.05) and terms.diff_l.item() == pytest.approx(0.05)
    assert terms.reward_margin.item() == pytest.approx(0.2, abs=1e-6)
    assert terms.accuracy.item() == 0.5
    assert not any(t.requires_grad for t in (terms.loss_w, terms.diff_w, terms.reward_margin, terms.accuracy))


def test_omega_one_lambda_zero_is_diffusion_dpo_of_wallace_et_al() -> None:
    g = torch.Generator().manual_seed(0)
    model_w, model_l, ref_w, ref_l = (0.1 + torch.rand(8, generator=g) for _ in range(4))
    beta = 7.0
    # Wallace et al.: -log sigmoid(-beta * ((L_w - L_w_ref) - (L_l - L_l_ref))), averaged over pairs
    expected = -torch.log(torch.sigmoid(-beta * ((model_w - ref_w) - (model_l - ref_l)))).mean()
    got = dpo_loss(model_w, model_l, ref_w, ref_l, DPOConfig(beta=beta, omega=1.0, sft_weight=0.0)).loss
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_large_beta_margins_stay_finite() -> None:
    # margin = 5000 * (0 - 1 * 1) = -5000: sigmoid underflows to 0, logsigmoid gives exactly 5000
    model_w = _t(2.0).requires_grad_()
    terms = dpo_loss(model_w, _t(1.0), _t(1.0), _t(1.0), DPOConfig(beta=5000.0))
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(5000.0)
    assert model_w.grad is not None and model_w.grad.item() == pytest.approx(5000.0)  # beta * sigmoid(5000) = beta


# ---------------------------------------------------------------- gradients


def test_gradients_match_the_hand_derivative() -> None:
    cfg = DPOConfig(beta=3.0, omega=2.5, sft_weight=0.4)
    model_w = _t(0.5, 1.0, 0.2).requires_grad_()
    model_l = _t(0.9, 1.0, 0.3).requires_grad_()
    ref_w, ref_l = _t(0.7, 0.9, 0.2).requires_grad_(), _t(0.6, 1.2, 0.25)
    dpo_loss(model_w, model_l, ref_w, ref_l, cfg).loss.backward()
    with torch.no_grad():
        margin = cfg.beta * ((model_l - ref_l) - cfg.omega * (model_w - ref_w))
        p = torch.sigmoid(-margin)  # d(-log sigmoid(m))/dm = -sigmoid(-m)
        batch = model_w.shape[0]
        assert torch.allclose(model_w.grad, (cfg.omega * cfg.beta * p + cfg.sft_weight) / batch, rtol=1e-6)
        assert torch.allclose(model_l.grad, -cfg.beta * p / batch, rtol=1e-6)
    assert ref_w.grad is None  # the reference is a constant of the objective


def test_omega_above_one_makes_the_winner_gradient_larger() -> None:
    def winner_grad(omega: float, start: float) -> torch.Tensor:
        model_w = _t(start, start + 0.1).requires_grad_()
        dpo_loss(model_w, _t(0.9, 0.4), _t(0.5, 0.6), _t(0.8, 0.5), DPOConfig(beta=4.0, omega=omega)).loss.backward()
        assert model_w.grad is not None
        return model_w.grad

    # at the first step the model is the reference (diff_w = 0): the margin does not depend on omega, the ratio is
    # exactly omega
    assert torch.allclose(winner_grad(3.0, 0.5), 3.0 * winner_grad(1.0, 0.5), rtol=1e-6)
    assert bool((winner_grad(2.0, 0.45) > winner_grad(1.0, 0.45)).all())


# ---------------------------------------------------------------- config and inputs


@pytest.mark.parametrize("kwargs, field", [
    ({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"), ({"beta": float("inf")}, "beta"),
    ({"omega": 0.99}, "omega"), ({"omega": float("nan")}, "omega"),
    ({"sft_weight": -0.1}, "sft_weight"), ({"sft_weight": True}, "sft_weight"),
])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        DPOConfig(**kwargs)


def test_mismatched_losses_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(_t(1.0, 2.0), _t(1.0), _t(1.0), _t(1.0))
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- pair losses through the step


class _Tiny(nn.Module):
    """A velocity model over target tokens with LoRA-able layers and a dependence on the noise level."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.inp = ops.Linear(dim, 32)
        self.out = ops.Linear(32, dim)

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor, mask: object, s: torch.Tensor,
                img_shapes: list[tuple[int, int, int]]) -> torch.Tensor:
        _, h, w = img_shapes[0]
        x = hidden[:, :h * w]  # target tokens [B, N_t, D]
        return self.out(torch.tanh(self.inp(x) + s.reshape(-1, 1, 1)))


def _batch(target: torch.Tensor, sources: torch.Tensor) -> TrainBatch:
    return TrainBatch(step=5, indices=(0, 1), ids=("a", "b"), target=target, sources=(sources,),
                      embeds=torch.zeros(2, 1, 8), mask=None, languages=("en", "en"))


def _pair(seed: int = 0) -> tuple[TrainBatch, TrainBatch]:
    g = torch.Generator().manual_seed(seed)
    sources = torch.randn(2, 4, 8, 8, generator=g)
    return (_batch(torch.randn(2, 4, 8, 8, generator=g), sources),
            _batch(torch.randn(2, 4, 8, 8, generator=g), sources))


def _perturbed_lora(model: nn.Module) -> list[nn.Parameter]:
    params = add_trainable_lora(model, rank=2, target_modules=["inp", "out"])
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn_like(p))  # B = 0 would make "adapters disabled" trivially equal
    return params


def test_identical_winner_and_loser_give_identical_losses_and_zero_margin() -> None:
    torch.manual_seed(0)
    model, reference = _Tiny(), _Tiny()
    batch_w, _ = _pair()
    s = torch.tensor([0.3, 0.8])
    noise = seeded_noise(batch_w, 7, 2)
    losses = pair_losses(model, reference, batch_w, batch_w, s, noise, ObjectiveConfig(), patch=2)
    assert torch.equal(losses.model_w, losses.model_l) and torch.equal(losses.ref_w, losses.ref_l)
    terms = dpo_loss(losses.model_w, losses.model_l, losses.ref_w, losses.ref_l, DPOConfig())
    assert terms.reward_margin.item() == 0.0
    # the same pair with the loser noised differently would not be identical: the shared draw is what makes it so
    other = flow_losses(model, batch_w, s, seeded_noise(batch_w, 8, 2), ObjectiveConfig(), patch=2).per_sample
    assert not torch.allclose(other, losses.model_l)
    assert not torch.allclose(losses.model_w, losses.ref_w)  # two different networks


def test_pair_losses_are_the_step_losses_with_gradient_on_the_model_only() -> None:
    torch.manual_seed(1)
    model, reference = _Tiny(), _Tiny()
    batch_w, batch_l = _pair(1)
    s, noise = torch.tensor([0.5, 0.2]), seeded_noise(batch_w, 3, 2)
    losses = pair_losses(model, reference, batch_w, batch_l, s, noise, ObjectiveConfig(), patch=2)
    for got, net, batch in [(losses.model_w, model, batch_w), (losses.model_l, model, batch_l),
                            (losses.ref_w, reference, batch_w), (losses.ref_l, reference, batch_l)]:
        assert torch.allclose(got, flow_losses(net, batch, s, noise, ObjectiveConfig(), patch=2).per_sample)
    assert losses.model_w.requires_grad and losses.model_l.requires_grad
    assert not losses.ref_w.requires_grad and not losses.ref_l.requires_grad


def test_lora_disabled_reference_is_the_base_model() -> None:
    torch.manual_seed(2)
    model = _Tiny()
    base = _Tiny()
    base.load_state_dict(model.state_dict())
    params = _perturbed_lora(model)
    batch_w, batch_l = _pair(2)
    s, noise = torch.tensor([0.6, 0.1]), seeded_noise(batch_w, 4, 2)
    losses = pair_losses(model, None, batch_w, batch_l, s, noise, ObjectiveConfig(), patch=2, lora="train")
    frozen = pair_losses(model, base, batch_w, batch_l, s, noise, ObjectiveConfig(), patch=2)
    assert torch.equal(losses.ref_w, frozen.ref_w) and torch.equal(losses.ref_l, frozen.ref_l)
    assert not torch.allclose(losses.model_w, losses.ref_w)  # the trained adapters do change the output
    dpo_loss(losses.model_w, losses.model_l, losses.ref_w, losses.ref_l, DPOConfig(omega=2.0)).loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
    assert all(a.strength == 1.0 for a in model.inp.adapters)  # restored after the reference pass


def test_pair_losses_refuse_ambiguous_references_and_mismatched_pairs() -> None:
    model = _Tiny()
    batch_w, batch_l = _pair()
    s, noise = torch.tensor([0.5, 0.5]), seeded_noise(batch_w, 0, 2)
    with pytest.raises(ValueError, match="exactly one of reference"):
        pair_losses(model, None, batch_w, batch_l, s, noise, ObjectiveConfig(), patch=2)
    with pytest.raises(ValueError, match="exactly one of reference"):
        pair_losses(model, _Tiny(), batch_w, batch_l, s, noise, ObjectiveConfig(), patch=2, lora="train")
    small = _batch(torch.zeros(2, 4, 4, 4), batch_w.sources[0])
    with pytest.raises(ValueError, match="differ in shape"):
        pair_losses(model, _Tiny(), batch_w, small, s, noise, ObjectiveConfig(), patch=2)


# ---------------------------------------------------------------- the preference manifest


def _image(path: Path, size: tuple[int, int] = (24, 16)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path.name


def test_preference_reader_reads_good_lines_and_counts_bad_ones(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    img = tmp_path / "img"
    for name in ("src.png", "w.png", "l.png"):
        _image(img / name)
    good = {"sources": ["img/src.png"], "instruction": "Make it red.", "winner": "img/w.png", "loser": "img/l.png",
            "winner_score": 0.9, "loser_score": 0.2, "id": "pair-1", "task": "adjust"}
    t2i = {"instruction": "A red square.", "winner": "img/w.png", "loser": "img/l.png"}
    lines = [json.dumps(good), "", json.dumps(t2i),
             "{not json",                                                       # line 4
             json.dumps({**t2i, "loser": None}),                                # line 5: loser missing
             json.dumps({**t2i, "winner_score": "high"}),                      # line 6: score not a number
             json.dumps({**t2i, "winner": "img/missing.png"}),                 # line 7: no such file
             json.dumps({**t2i, "instruction": "  "}),                          # line 8: empty instruction
             json.dumps({**t2i, "sources": "img/src.png", "id": "named"}),      # line 9: sources not a list
             json.dumps({**t2i, "loser": "img/w.png"})]                         # line 10: winner is the loser
    manifest = tmp_path / "prefs.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    skips = SkipLog()
    records = read_preferences(manifest, skips=skips)
    assert [r.id for r in records] == ["pair-1", "prefs.jsonl:3"]
    first = records[0]
    assert isinstance(first, PreferenceRecord)
    assert first.winner.path == img / "w.png" and first.loser.path == img / "l.png"
    assert [s.path for s in first.sources] == [img / "src.png"] and first.winner.width == 24
    assert (first.winner_score, first.loser_score, first.task, first.instruction) == (0.9, 0.2, "adjust",
                                                                                      "Make it red.")
    assert records[1].sources == () and records[1].winner_score is None and records[1].task == "default"
    assert skips.total == 7
    assert skips.counts == {"malformed": 5, "missing_file": 1, "empty_text": 1}
    text = caplog.text
    for where, field in [("prefs.jsonl:4", "not JSON"), ("prefs.jsonl:5", "loser"), ("prefs.jsonl:6", "winner_score"),
                         ("prefs.jsonl:7", "missing.png"), ("prefs.jsonl:8", "instruction"),
                         ("prefs.jsonl:9", "sources"), ("prefs.jsonl:10", "winner and loser")]:
        assert any(where in m and field in m for m in text.splitlines()), (where, field)


def test_preference_reader_refuses_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_preferences(tmp_path / "nope.jsonl")
