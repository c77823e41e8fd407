"""Offload modes with compute on ``cuda:0``, without a GPU, in ComfyUI's venv (its CUDA build of torch).

Whole edits run on the emulated device of tests/fake_cuda.py (real values, CUDA's device checks; the tiny
Qwen2.5-VL included, which cannot run under ``FakeTensorMode``: transformers builds its 3D positions from values),
and the sampling and decoding phases also under ``FakeTensorMode``. In every mode, op by op
(tests/offload_scenarios.py):

* the result is bit-identical to the same pipeline computing resident on the CPU, and no op mixed devices;
* the weights on the device - found by walking the modules, counted by the storage tracker - never exceed the
  placement's ledger and reach it at the peak; the ledger never exceeds ``max_vram`` (the block in flight is in it);
* everything else on the device (activations, inputs) is the same in every mode, so the placements allocate
  nothing they do not count and the device holds at most ``max_vram`` + the activations of a resident run.

``torch.cuda.is_available()`` is False there, so streams, events and pinning are skipped and not exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.comfyui_harness import run_in_comfyui

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
# ComfyUI's folder comes first on the snippet's sys.path and has a ``tests`` package of its own: bind ours
OUR_TESTS = f"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("tests", {str(TESTS / "__init__.py")!r},
                                               submodule_search_locations=[{str(TESTS)!r}])
sys.modules["tests"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["tests"])
"""


def _run(code: str, inputs: dict[str, Any] | None = None) -> Any:
    return run_in_comfyui(OUR_TESTS + code, inputs)

RUNS = [("none", "none"), ("none", "minimum"), ("model", "minimum"), ("blocks", "none"), ("blocks", "minimum")]


def _emulated(runs: list[tuple[str, str]], encoder: str) -> list[dict[str, Any]]:
    code = ("from tests.offload_scenarios import edit_on_fake_cuda\n"
            "emit([edit_on_fake_cuda(mode, budget, INPUTS['encoder']) for mode, budget in INPUTS['runs']])")
    return _run(code, {"runs": runs, "encoder": encoder})


def _check_memory(run: dict[str, Any], mode: str, unaccounted: int) -> None:
    assert run["max_weights"] == run["ledger_peak"] and run["max_weights_over_ledger"] == 0, run
    if run["max_vram"] is not None:
        assert run["ledger_peak"] <= run["max_vram"], run
    assert run["max_unaccounted"] == unaccounted, run  # activations do not depend on the mode
    assert run["tracker_peak"] <= run["ledger_peak"] + unaccounted
    assert (run["ledger_after"] > 0) == (mode == "none")  # only 'none' keeps weights on the device


@pytest.mark.parametrize("encoder", ["stub", "qwen"])
def test_whole_edits_on_cuda_in_every_mode(encoder: str) -> None:
    runs = RUNS if encoder == "stub" else [("none", "none"), ("blocks", "minimum")]
    results = _emulated(runs, encoder)
    unaccounted = results[0]["max_unaccounted"]
    for (mode, budget), run in zip(runs, results):
        assert run["same_latents"] and run["same_pixels"], (mode, budget, run)
        assert run["parameter_devices"] == (["cuda:0"] if mode == "none" else ["cpu"])
        _check_memory(run, mode, unaccounted)
    streamed = results[-1]["streamed"]
    assert streamed["transformer" if encoder == "stub" else "encoder"] == 4  # the minimum budget streams


def test_sampling_and_decoding_under_fake_tensor_mode() -> None:
    code = ("from tests.offload_scenarios import phases_under_fake_tensor_mode\n"
            "emit([phases_under_fake_tensor_mode(mode, budget) for mode, budget in INPUTS['runs']])")
    results = _run(code, {"runs": RUNS})
    for (mode, _), run in zip(RUNS, results):
        assert run["result_devices"] == ["cuda:0"]
        _check_memory(run, mode, results[0]["max_unaccounted"])


def test_the_emulated_device_refuses_what_cuda_refuses() -> None:
    errors = _run("from tests.offload_scenarios import device_errors_on_fake_cuda\n"
                  "emit(device_errors_on_fake_cuda())")
    assert errors["device"] == "cuda:0" and errors["cuda_available"] == "False"
    assert "Expected all tensors to be on the same device" in errors["mixed"]
    assert errors["cpu_scalar"] == ""  # CUDA kernels take CPU scalars
    assert "numpy" in errors["numpy"] and "generator" in errors["generator"]
    assert "Expected all tensors to be on the same device" in errors["edit_with_vae_left_on_cpu"]
