"""A LoRA trained by the real trainer on the CPU loads in firered_core and in the real ComfyUI 0.3.75 (issue 3).

``tests/integration/test_comfyui_lora.py`` proves that files written by ``firered_core.lora.save_lora`` load in ComfyUI; this
test closes the loop from the training side, with the file a training run exports:

1. Base model files: the smallest transformer ComfyUI can build (one full-width block, see
   ``tests/integration/test_comfyui_lora.py``: its Qwen-Image detection infers only ``in_channels`` and ``num_layers``) with
   seeded random weights, saved with ``save_comfy_transformer`` into a ComfyUI base directory, and a small random
   VAE with the 16 latent channels that transformer expects (``save_comfy_vae``).
2. A latent cache of a few synthetic edit pairs (``tests/train_fixtures.py``), built with ``build_cache`` from
   that VAE and a random tiny Qwen2.5-VL encoder (``firered_train.model.tiny_encoder``) of width 3584, the transformer's
   ``joint_attention_dim``: the cheapest real condition of the right width. The single files carry no text
   encoder, so the run must read a cache.
3. ``firered train tiny_lora`` in a subprocess, ``model.weights`` pointing at the two files, for ``STEPS`` LoRA
   steps; it exports ``lora.safetensors`` (ComfyUI layout). Every adapter has moved off its zero init except the
   four whose outputs only reach the discarded text stream of the last block (``NO_GRADIENT``).
4. (a) firered_core: ``apply_lora`` of the export on the base file leaves no key unmatched.
   (b) ComfyUI's venv: ``comfy.sd.load_diffusion_model`` + ``comfy.sd.load_lora_for_models`` on the same base file
   (``tests/integration/test_comfyui_lora.py``'s snippet): no "lora key not loaded", one patch per trained adapter, and every
   patched weight equal to ``firered_core.lora.merge_lora`` of the export on the same base (the merge changes each
   trained layer by more than 100 x the tolerance, so a skipped or mis-scaled patch would show).

Timings on two CPU cores: base files 4-9 s, cache 18-28 s (mostly the width-3584 encoder's random init: a
151,936 x 3584 embedding, ~3 GB, freed before training), training 8 s, ComfyUI check 20 s; about 75 s in all.
Peak RAM ~5.5 GB, in ComfyUI's process (its float32 model plus the float32 merge_lora reference).
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import time
from pathlib import Path

import pytest
import torch
from firered_train.cache.build import build_cache, make_cache_spec
from firered_train.config import TrainConfig, load_config
from firered_train.data.records import read_records
from firered_train.model.tiny_encoder import tiny_qwen_vl_encoder

from firered_core.config import VAEConfig
from firered_core.loading import (
    load_transformer_file,
    load_vae_file,
    open_weights,
    save_comfy_transformer,
    save_comfy_vae,
)
from firered_core.lora import apply_lora, merge_lora
from firered_core.vae import FireRedVAE

from ..comfyui_harness import make_base_dir, require_comfyui, run_in_comfyui
from .test_comfyui_lora import (
    _API_SNIPPET,
    CONFIG,
    LOAD_PROBLEMS,
    MODEL_NAME,
    RANK,
    NOT_LOADED,
    TOL,
    _random_transformer,
)
from ..train_fixtures import cli, cli_env, make_pairs, tiny_overrides

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

STEPS = 3
N_PAIRS = 4
SEED = 0
# The tiny preset's VAE layout (4x, 8 px per token with patch 2, as tiny_lora's sampler expects) with the 16
# latent channels a full-width transformer reads (in_channels 64 = 16 x 2 x 2).
SMALL_VAE = VAEConfig(base_dim=8, z_dim=CONFIG.latent_channels, dim_mult=(1, 2, 2), num_res_blocks=1,
                      temperal_downsample=(False, True), latents_mean=(0.0,) * CONFIG.latent_channels,
                      latents_std=(1.0,) * CONFIG.latent_channels)
# The trainer's default targets (attention and MLP of both streams): 12 layers in the one block.
ADAPTERS = 12
# In the last block the text stream's own outputs are discarded (only image tokens leave the transformer), so
# these adapters get no gradient and stay at their zero init: structural, not a training failure.
NO_GRADIENT = ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.to_add_out",
               "transformer_blocks.0.txt_mlp.net.0.proj", "transformer_blocks.0.txt_mlp.net.2")
PREFIX, UP_SUFFIX = "diffusion_model.", ".lora_up.weight"
TRAIN_TIMEOUT = 600  # seconds; the run takes well under a minute on two CPU cores


def _random_vae(seed: int) -> FireRedVAE:
    """``SMALL_VAE`` with its default init, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FireRedVAE(SMALL_VAE).eval()


def _build_cache(cfg: TrainConfig, vae_path: Path) -> int:
    """Cache the run's training pairs with the VAE file and a random tiny encoder as wide as the transformer."""
    records = read_records(cfg.data.reader, cfg.data.path, default_task=cfg.data.default_task)
    vae = load_vae_file(vae_path)
    encoder = tiny_qwen_vl_encoder(CONFIG.joint_attention_dim, SEED)
    spec = make_cache_spec(cfg.data.sampler, vae, encoder.dim, model=f"{vae_path.name} + random tiny encoder")
    written = build_cache(records, cfg.data.cache_dir, spec, vae=vae, encoder=encoder, sampler=cfg.data.sampler)
    del encoder, vae
    gc.collect()  # about 3 GB of encoder weights (151,936 x 3584 embedding) go before training starts
    return written


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Base files in a ComfyUI base directory, and the LoRA a real ``firered train tiny_lora`` run exported."""
    require_comfyui()
    root = tmp_path_factory.mktemp("comfyui-trained-lora")
    base = make_base_dir(root / "comfyui")
    timings: dict[str, float] = {}

    started = time.monotonic()
    model_path = save_comfy_transformer(_random_transformer(seed=SEED),
                                        base / "models" / "diffusion_models" / MODEL_NAME)
    vae_path = save_comfy_vae(_random_vae(seed=SEED + 1), base / "models" / "vae" / "firered-small-vae.safetensors")
    make_pairs(root / "train", N_PAIRS)
    overrides = tiny_overrides(root, steps=STEPS, val=False, extra=[
        f"--model.weights={model_path},{vae_path}", "--model.preset=firered-1.0",
        "--optim.warmup_steps=0", "--logging.validation_every=0", "--logging.n_val_samples=0",
        f"--checkpoint.every_steps={STEPS}"])
    timings["base_files"] = time.monotonic() - started

    started = time.monotonic()
    assert _build_cache(load_config("tiny_lora", overrides), vae_path) == N_PAIRS
    timings["cache"] = time.monotonic() - started

    started = time.monotonic()
    proc = subprocess.run(cli("train", "tiny_lora", *overrides), env=cli_env(threads=2), capture_output=True,
                          text=True, timeout=TRAIN_TIMEOUT, check=False)  # the assert below shows its output
    timings["train"] = time.monotonic() - started
    assert proc.returncode == 0, f"training failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    lora_path = root / "run" / "lora.safetensors"
    assert lora_path.is_file(), sorted(p.name for p in (root / "run").iterdir())
    log.info("base files %.1f s, cache %.1f s, %d training steps %.1f s", timings["base_files"], timings["cache"],
             STEPS, timings["train"])
    return {"model": model_path, "lora": lora_path, "run": root / "run", "timings": timings}


def _adapted_layers(lora_path: Path) -> dict[str, float]:
    """Module path -> max |up factor| of every adapter in the exported file (ComfyUI layout)."""
    with open_weights(lora_path) as src:
        keys = src.keys()
        assert keys and all(k.startswith(PREFIX) for k in keys), keys[:4]
        return {k[len(PREFIX):-len(UP_SUFFIX)]: src.get(k).abs().max().item() for k in keys if k.endswith(UP_SUFFIX)}


def test_the_run_trained_the_lora(trained: dict) -> None:
    lines = (trained["run"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [record["step"] for record in map(json.loads, lines) if "loss" in record]
    assert steps == list(range(1, STEPS + 1)), steps
    layers = _adapted_layers(trained["lora"])
    assert len(layers) == ADAPTERS, sorted(layers)
    untrained = sorted(path for path, up in layers.items() if up == 0.0)
    assert untrained == sorted(NO_GRADIENT), untrained  # every other adapter moved away from its zero init


def test_trained_lora_applies_in_firered_core(trained: dict) -> None:
    model = load_transformer_file(trained["model"], dtype=torch.float32)
    report = apply_lora(model, trained["lora"])
    log.info("firered_core: %d adapters applied, %d unmatched", report.applied, len(report.unmatched))
    assert report.unmatched == []
    assert report.applied == ADAPTERS
    # Folding the attached adapters changes every trained layer by far more than the ComfyUI comparison's TOL,
    # so that comparison (below) would see a layer ComfyUI skipped or patched differently.
    params = dict(model.named_parameters())
    before = {path: params[f"{path}.weight"].detach().clone() for path in _adapted_layers(trained["lora"])}
    merge_lora(model)
    change = {path: (params[f"{path}.weight"] - w).abs().max().item() for path, w in before.items()}
    assert all(change[path] > 100 * TOL for path in change if path not in NO_GRADIENT), change


def test_trained_lora_loads_in_comfyui_like_merge_lora(trained: dict) -> None:
    started = time.monotonic()
    result = run_in_comfyui(_API_SNIPPET, {"model": str(trained["model"]), "loras": {"trained": str(trained["lora"])}})
    elapsed = time.monotonic() - started
    assert result["model_class"] == "QwenImage"
    assert result["dtype"] == "torch.float32"
    problems = [line for line in result["load_log"] if any(m in line for m in LOAD_PROBLEMS)]
    assert not problems, problems
    fmt = result["formats"]["trained"]
    log.info("ComfyUI (%.1f s): %d patches, max |ComfyUI - merge_lora| = %.3g", elapsed, fmt["patched"],
             fmt["max_abs_diff"])
    not_loaded = [line for line in fmt["log"] if any(m in line for m in NOT_LOADED)]
    assert not not_loaded, not_loaded[:5]
    assert fmt["patched"] == fmt["merged"] == ADAPTERS, fmt
    assert not fmt["unmatched"]
    assert fmt["max_abs_diff"] <= TOL, fmt


# ---------------------------------------------------------------------------------------------------------------
# The same, for the file the FireRed Train LoRA node writes (issue 5)
# ---------------------------------------------------------------------------------------------------------------

NODE_LORA = "node trained"  # a name with a space, as people type them; the node adds .safetensors
NODE_STEPS = 3
NODE_LR = 1e-2  # large enough that every trained layer moves far beyond TOL in three steps


@pytest.fixture(scope="module")
def node_trained(trained: dict, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> dict:
    """FireRed Train LoRA, called as ComfyUI calls it, on the one-block base file: the LoRA lands in the base
    directory's models/loras, where the server's LoraLoaderModelOnly lists it."""
    from firered_core.pipeline import FireRedEditPipeline
    from nodes.model_handle import FireRedModel, LoadedFireRed
    from nodes.train_lora import FireRedTrainLoRA

    from firered_core.config import get_preset

    base = trained["model"].parents[2]
    loras = base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(tmp_path_factory.mktemp("node-pairs"), N_PAIRS, seed=3)
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    monkeypatch.setenv("FIRERED_LORA_DIR", str(loras))  # outside ComfyUI the node writes here
    started = time.monotonic()
    with torch.inference_mode():  # as ComfyUI runs the loader node
        pipeline = FireRedEditPipeline(load_transformer_file(trained["model"], dtype=torch.float32),
                                       load_vae_file(trained["model"].parents[1] / "vae" /
                                                     "firered-small-vae.safetensors"),
                                       tiny_qwen_vl_encoder(CONFIG.joint_attention_dim, SEED),
                                       get_preset("firered-1.0").scheduler)
        pipeline.reference_area = pipeline.output_area = 64 * 64
        model = FireRedModel(LoadedFireRed.wrap(pipeline, label="one-block"))
        path, curve, preview, _ = FireRedTrainLoRA().train(
            model, data_folder=str(pairs), instructions="", steps=NODE_STEPS, learning_rate=NODE_LR, rank=RANK,
            alpha=2.0, resolution=64, batch_size=2, seed=SEED, lora_name=NODE_LORA, resume=False, overwrite=False,
            preview_steps=1, checkpoint_every=100, unique_id="1")
    elapsed = time.monotonic() - started
    del model, pipeline
    gc.collect()
    log.info("Train LoRA node on the one-block model: %.1f s for %d steps (incl. the encoder's init)", elapsed,
             NODE_STEPS)
    return {"lora": Path(path), "curve": curve, "preview": preview}


def test_lora_from_the_train_lora_node_loads_in_core_lora_loader_model_only(trained: dict,
                                                                              node_trained: dict) -> None:
    """The real server: UNETLoader -> core LoraLoaderModelOnly (the node's file) -> ModelSave; no "lora key not
    loaded", every trained layer patched, and the saved weights equal firered_core's merge of the same file."""
    from .test_comfyui_lora import run_lora_graph

    lora = node_trained["lora"]
    assert lora.name == f"{NODE_LORA}.safetensors" and lora.parent.name == "loras"
    layers = _adapted_layers(lora)
    assert len(layers) == ADAPTERS, sorted(layers)
    saved = run_lora_graph(trained["model"].parents[2], lora.name)
    reference = load_transformer_file(trained["model"], dtype=torch.float32)
    base_weights = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    report = merge_lora(reference, lora)
    assert report.unmatched == [] and report.applied == ADAPTERS
    ours = reference.state_dict()
    prefix = "model.diffusion_model."
    worst, changed, smallest = 0.0, set(), float("inf")
    with open_weights(saved) as src:
        for key in src.keys():
            name = key[len(prefix):]
            if key.startswith(prefix) and name in ours:
                got = src.get(key).float()
                worst = max(worst, (got - ours[name]).abs().max().item())
                change = (got - base_weights[name]).abs().max().item()
                if change > 10 * TOL:
                    changed.add(name.removesuffix(".weight"))
                    smallest = min(smallest, change)
    log.info("node LoRA via LoraLoaderModelOnly: %d layers changed (smallest max change %.3g), max |ComfyUI - "
             "merge_lora| = %.3g", len(changed), smallest, worst)
    assert worst <= TOL
    assert changed == set(layers) - set(NO_GRADIENT), sorted(changed ^ (set(layers) - set(NO_GRADIENT)))
