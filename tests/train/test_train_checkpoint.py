"""Training checkpoints: exact resume, atomic saves (also under SIGKILL), pruning, no pickle anywhere."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from firered_train.state import checkpoint as ckpt_mod
from firered_train.state.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      resolve_checkpoint, save_checkpoint)
from firered_train.state.rng import capture_rng_states, restore_rng_states
from firered_train.state.codec import StateCodecError, decode_state, encode_state


# ---------------------------------------------------------------- a tiny training setup
def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.2), nn.Linear(16, 3))


def _optim(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return opt, sched


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
           steps: int) -> None:
    """Steps whose data, dropout and batch size come from the torch, numpy and python global RNGs."""
    model.train()
    for _ in range(steps):
        batch = random.randint(2, 5)
        x = torch.randn(batch, 6) + float(np.random.normal())
        loss = (model(x) - x[:, :3]).pow(2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(root: Path, step: int, model: nn.Module, **kwargs: object) -> Path:
    return save_checkpoint(root, step, model_state=model.state_dict(), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- exact resume
def test_resume_continues_bitwise_identically(tmp_path: Path) -> None:
    _seed_all(1)
    model = _model(0)
    opt, sched = _optim(model)
    _train(model, opt, sched, 5)
    save_checkpoint(tmp_path, 5, model_state=model.state_dict(), optimizer=opt, lr_scheduler=sched,
                    sampler_state={"step": 5, "cursors": [1, 2]}, extra={"tokens": 123})
    _train(model, opt, sched, 6)  # the uninterrupted run
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    reference_opt = opt.state_dict()

    _seed_all(99)  # everything the resumed process has before loading is different
    resumed = _model(7)
    opt2, sched2 = _optim(resumed)
    ckpt = load_checkpoint(tmp_path, model=resumed, optimizer=opt2, lr_scheduler=sched2)
    assert ckpt.step == 5 and ckpt.sampler == {"step": 5, "cursors": [1, 2]} and ckpt.extra == {"tokens": 123}
    assert sched2.last_epoch == 5
    _train(resumed, opt2, sched2, 6)

    for key, value in resumed.state_dict().items():
        assert torch.equal(value, reference[key]), key
    for pid, state in opt2.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, reference_opt["state"][pid][name]), (pid, name)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again, not a JSON list


def test_checkpoint_holds_no_pickle(tmp_path: Path) -> None:
    model = _model(0)
    opt, sched = _optim(model)
    _train(model, opt, sched, 2)
    path = _save(tmp_path, 2, model, optimizer=opt, lr_scheduler=sched, ema={"w": torch.ones(2)})
    names = sorted(p.name for p in path.iterdir())
    assert names == ["ema.safetensors", "meta.json", "model.safetensors", "optimizer.safetensors",
                     "rng.safetensors"]
    for p in path.iterdir():
        head = p.read_bytes()[:2]
        assert head != b"\x80\x04" and head[:2] != b"PK", f"{p.name} looks like a pickle/zip"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 2 and meta["model_kind"] == "full"
    assert set(meta["sections"]) == {"optimizer", "lr_scheduler", "ema", "rng"}


# ---------------------------------------------------------------- atomicity
def test_failed_save_leaves_latest_on_the_previous_checkpoint(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(0)
    first = _save(tmp_path, 10, model)
    calls = {"n": 0}
    real_write = ckpt_mod.write_safetensors

    def dying_write(path: Path, tensors: dict, **kwargs: object) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the model file is written, the next file fails mid-way
            Path(path).write_bytes(b"partial")
            raise OSError("disk full")
        return real_write(path, tensors, **kwargs)

    monkeypatch.setattr(ckpt_mod, "write_safetensors", dying_write)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 20, model, optimizer=_optim(model)[0])
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text().strip() == first.name
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", first.name]  # the temp dir is gone
    assert load_checkpoint(tmp_path).step == 10


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_save_leaves_no_partial_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, torch
        from firered_train.state.checkpoint import save_checkpoint
        root = {str(tmp_path)!r}
        save_checkpoint(root, 1, model_state={{"w": torch.zeros(3)}})
        real_replace = os.replace
        def replace(src, dst):
            if os.path.basename(str(src)).startswith(".tmp-step-"):
                os.kill(os.getpid(), signal.SIGKILL)  # every file is written, the rename never happens
            return real_replace(src, dst)
        os.replace = replace
        save_checkpoint(root, 2, model_state={{"w": torch.ones(3)}}, optimizer={{"m": torch.ones(3)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the killed save's directory, complete inside but never committed
    assert (tmp_path / "latest").read_text().strip() == "step-000001"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 1 and torch.equal(loaded.model_state["w"], torch.zeros(3))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # cleaned by the load
    save_checkpoint(tmp_path, 2, model_state={"w": torch.ones(3)})  # the step can be saved again
    assert load_checkpoint(tmp_path).step == 2


def test_latest_is_authoritative_and_stale_newer_steps_are_replaced(tmp_path: Path) -> None:
    model = _model(0)
    _save(tmp_path, 1, model)
    _save(tmp_path, 2, model)
    (tmp_path / "latest").write_text("step-000001\n")  # as if killed between the rename and the pointer write
    assert resolve_checkpoint(tmp_path).name == "step-000001"
    _save(tmp_path, 2, model, extra={"again": True})  # newer than latest: stale, replaced without complaint
    assert load_checkpoint(tmp_path).extra == {"again": True}
    with pytest.raises(FileExistsError, match="step 1 already exists"):
        _save(tmp_path, 1, model)
    _save(tmp_path, 1, model, replace=True, extra={"v": 2})
    assert load_checkpoint(tmp_path / "step-000001").extra == {"v": 2}


def test_broken_pointer_falls_back_to_newest_complete(tmp_path: Path) -> None:
    model = _model(0)
    _save(tmp_path, 3, model)
    _save(tmp_path, 4, model)
    (tmp_path / "latest").write_text("step-000099\n")
    assert latest_checkpoint(tmp_path).name == "step-000004"
    (tmp_path / "latest").unlink()
    assert resolve_checkpoint(tmp_path / "latest").name == "step-000004"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_keep_last_prunes_older_and_spares_other_timelines(tmp_path: Path) -> None:
    model = _model(0)
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    _save(tmp_path, 9, model)
    _save(tmp_path, 5, model, keep_last=2, replace=True)  # resumed from an older point: step 9 is left alone
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5, 9]
    assert resolve_checkpoint(tmp_path).name == "step-000005"


# ---------------------------------------------------------------- loading details
def test_adapter_checkpoint_loads_into_a_bigger_model(tmp_path: Path) -> None:
    model = _model(0)
    adapter = {"3.weight": torch.full((3, 16), 0.5)}
    save_checkpoint(tmp_path, 1, model_state=adapter, model_kind="adapter")
    load_checkpoint(tmp_path, model=model)
    assert torch.equal(model[3].weight, adapter["3.weight"])
    save_checkpoint(tmp_path, 2, model_state={"lora.up": torch.zeros(1)}, model_kind="adapter")
    with pytest.raises(CheckpointError, match="fit no module"):
        load_checkpoint(tmp_path, model=model)


def test_missing_section_is_an_error(tmp_path: Path) -> None:
    model = _model(0)
    _save(tmp_path, 1, model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path, optimizer=_optim(model)[0])


def test_rng_states_round_trip_per_rank(tmp_path: Path) -> None:
    _seed_all(5)
    rank0 = capture_rng_states()
    _seed_all(6)
    rank1 = capture_rng_states()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    save_checkpoint(tmp_path, 1, model_state={}, rng_states=[rank0, rank1])
    _seed_all(0)
    load_checkpoint(tmp_path, rank=1)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected
    with pytest.raises(ValueError, match="not for rank 2"):
        restore_rng_states([rank0, rank1], rank=2)


def test_state_codec_round_trips_what_json_loses() -> None:
    state = {
        0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4, dtype=torch.bfloat16)},
        "groups": [{"betas": (0.9, 0.999), "lr": 0.1 + 0.2, "none": None, "flag": True}],
        "__private": (float("inf"), -float("inf"), float("nan")),
        "arr": np.arange(5, dtype=np.uint32), "np_scalar": np.int64(7), 2.5: "float key",
        "a.b": torch.ones(1), "a": {"b": torch.zeros(1)},
    }
    tree, tensors = encode_state(state, "s")
    text = json.dumps(tree, allow_nan=False)  # strictly valid JSON
    back = decode_state(json.loads(text), tensors)
    assert set(back) == set(state)
    assert torch.equal(back[0]["exp_avg"], state[0]["exp_avg"]) and back[0]["exp_avg"].dtype == torch.bfloat16
    assert back["groups"][0] == {"betas": (0.9, 0.999), "lr": 0.1 + 0.2, "none": None, "flag": True}
    inf, ninf, nan = back["__private"]
    assert inf == math.inf and ninf == -math.inf and math.isnan(nan)
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3, 4]
    assert back["np_scalar"] == 7 and back[2.5] == "float key"
    assert torch.equal(back["a.b"], torch.ones(1)) and torch.equal(back["a"]["b"], torch.zeros(1))


def test_state_codec_refuses_objects_by_path() -> None:
    with pytest.raises(StateCodecError, match=r"opt\.groups\.0\.fn: a function cannot be stored"):
        encode_state({"groups": [{"fn": lambda: 0}]}, "opt")
    with pytest.raises(StateCodecError, match="dict key"):
        encode_state({(1, 2): 3})


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        save_checkpoint(tmp_path, -1, model_state={})
    with pytest.raises(ValueError, match="model_kind"):
        save_checkpoint(tmp_path, 1, model_state={}, model_kind="lora")  # type: ignore[arg-type]
    path = save_checkpoint(tmp_path, 1, model_state={})
    meta = json.loads((path / "meta.json").read_text())
    meta["version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
