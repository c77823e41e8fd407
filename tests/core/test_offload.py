"""Offload modes on the CPU: every mode gives the resident pipeline's latents and pixels bit for bit, the block
streamer really routes the weights through its slots (and puts the host tensors back), the budget rule keeps as
many blocks resident as fit and refuses a budget below the minimum, naming it.

The device is the CPU here, so ``none`` and ``model`` move nothing; the same modes on a ``cuda:0`` device are in
test_offload_fake_device.py. Streamed blocks are copied into the slots even on the CPU, so ``blocks`` runs every
weight of the transformer (and of the encoder, when it does not fit) through the streaming machinery.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.default import is_available, load_default_pipeline
from firered_core.offload import (BudgetError, DeviceLedger, OffloadPlacement, ResidentPlacement, find_blocks,
                                  format_gb, plan_part, required_bytes)
from firered_core.offload.copier import InlineCopier
from firered_core.offload.streamer import BlockStreamer
from firered_core.offload.weights import module_bytes, packed_bytes
from firered_core.pipeline import FireRedEditPipeline
from tests.node_fixtures import tiny_pipeline
from tests.offload_scenarios import build_pipeline

CPU = torch.device("cpu")


def deep_pipeline(layers: int = 4) -> FireRedEditPipeline:
    """The tiny test model with ``layers`` blocks four times as wide (each block then outweighs the VAE), so a
    budget can keep some blocks resident and stream the rest; the same weights on every call."""
    return build_pipeline("stub", layers=layers)


def _image(seed: int = 0, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _edit(pipe, **options: object):  # noqa: ANN001, ANN202 - pipeline, EditResult
    return pipe.edit([_image(0), _image(1)], "make it red", steps=2, true_cfg_scale=2.0, seed=5, **options)


def _same(a, b) -> bool:  # noqa: ANN001 - two EditResults
    return torch.equal(a.latents, b.latents) and np.array_equal(np.asarray(a.image), np.asarray(b.image))


def _budget_for_resident_blocks(pipe, resident: int) -> int:  # noqa: ANN001 - pipeline
    """The max_vram under which the transformer keeps exactly ``resident`` blocks and streams the others."""
    blocks = find_blocks(pipe.transformer)
    fixed = module_bytes(pipe.transformer, skip=blocks)
    sizes = [packed_bytes(b) for b in blocks]
    return fixed + sum(sizes[:resident]) + sum(sizes[resident:resident + 2])


# ---------------------------------------------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,resident_blocks", [("none", None), ("model", None), ("blocks", None), ("blocks", 0),
                                                 ("blocks", 1)],
                         ids=["none", "model", "blocks", "blocks-stream-all", "blocks-one-resident"])
def test_every_mode_matches_the_resident_pipeline(mode: str, resident_blocks: int | None) -> None:
    pipe = deep_pipeline()
    reference = _edit(pipe)
    hosts = {name: p for name, p in pipe.transformer.named_parameters()}
    budget = None if resident_blocks is None else _budget_for_resident_blocks(pipe, resident_blocks)
    pipe.set_offload(mode, device="cpu", max_vram=budget)
    plans = pipe.placement.check(pipe.components())
    if resident_blocks is not None:
        assert plans["transformer"].resident_blocks == tuple(range(resident_blocks)) and not plans["vae"].streamed
    probe = pipe.transformer.transformer_blocks[3].attn.to_q  # streamed whenever anything is
    seen: list[bool] = []
    probe.register_forward_pre_hook(lambda m, args: seen.append(m.weight is hosts["transformer_blocks.3.attn.to_q.weight"]))

    assert _same(_edit(pipe), reference)
    assert seen and all(seen) == (mode != "blocks")  # streamed: the block computed with its slot copy
    assert all(p is hosts[name] for name, p in pipe.transformer.named_parameters())  # host tensors put back
    assert pipe.placement.ledger.resident == 0 and pipe.device == CPU


@pytest.mark.parametrize("options", [{"keep_unedited": True}, {"sampler": "stochastic"}],
                         ids=["keep_unedited", "stochastic"])
def test_blocks_mode_with_the_other_edit_paths(options: dict) -> None:
    pipe = deep_pipeline()
    reference = _edit(pipe, **options)
    pipe.set_offload("blocks", device="cpu", max_vram=_budget_for_resident_blocks(pipe, 0))
    assert _same(_edit(pipe, **options), reference)


@pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")
def test_the_embedded_default_streams_its_encoder_too_when_it_does_not_fit() -> None:
    """MiniLM (the default's encoder) is the largest component: a budget below it streams its layers as well."""
    pipe = load_default_pipeline()
    image = _image(2, (96, 64))
    reference = pipe.edit([image], "make the square blue", steps=3, seed=1)
    parts = pipe.components()
    encoder_minimum = required_bytes("blocks", {"encoder": parts["encoder"]})[0]
    budget = max(encoder_minimum, required_bytes("blocks", parts)[0])
    assert budget < module_bytes(parts["encoder"])
    pipe.set_offload("blocks", device="cpu", max_vram=budget)
    assert pipe.placement.check(parts)["encoder"].streamed
    result = pipe.edit([image], "make the square blue", steps=3, seed=1)
    assert _same(result, reference) and result.keep_unedited == reference.keep_unedited


# ---------------------------------------------------------------------------------------------------------------
# the budget rule
# ---------------------------------------------------------------------------------------------------------------


def test_blocks_stay_resident_while_they_fit() -> None:
    pipe = deep_pipeline(layers=5)
    transformer = pipe.transformer
    assert find_blocks(transformer) == list(transformer.transformer_blocks)
    assert plan_part("transformer", transformer, module_bytes(transformer), stream=True).streamed == ()  # fits
    assert plan_part("transformer", transformer, None, stream=True).streamed == (0, 1, 2, 3, 4)  # no budget
    assert plan_part("transformer", transformer, None, stream=False).streamed == ()  # offload model
    for resident in range(3):  # with 3 resident the 2 slots would hold the rest: the whole model fits
        budget = _budget_for_resident_blocks(pipe, resident)
        plan = plan_part("transformer", transformer, budget, stream=True)
        assert plan.resident_blocks == tuple(range(resident)) and plan.peak_bytes <= budget
        if resident:  # a byte less: one block fewer stays resident
            assert plan_part("transformer", transformer, budget - 1, stream=True).resident_blocks == tuple(
                range(resident - 1))
        else:
            with pytest.raises(BudgetError):
                plan_part("transformer", transformer, budget - 1, stream=True)


def test_a_budget_below_the_minimum_is_refused_naming_it() -> None:
    pipe = deep_pipeline()
    parts = pipe.components()
    for mode in ("none", "model", "blocks"):
        need, _ = required_bytes(mode, parts)
        before = pipe.placement
        with pytest.raises(BudgetError, match=f"at least {format_gb(need)}") as err:
            pipe.set_offload(mode, device="cpu", max_vram=need - 1)
        assert isinstance(err.value, ValueError) and f"max_vram >= {format_gb(need)}" in str(err.value)
        assert pipe.placement is before  # nothing changed
        pipe.set_offload(mode, device="cpu", max_vram=need)  # the minimum itself works
    assert required_bytes("blocks", parts)[0] < required_bytes("model", parts)[0] < required_bytes("none", parts)[0]


def test_the_minimum_of_blocks_is_fixed_weights_plus_two_blocks() -> None:
    transformer = deep_pipeline().transformer
    blocks = find_blocks(transformer)
    expected = module_bytes(transformer, skip=blocks) + sum(packed_bytes(b) for b in blocks[:2])
    assert expected < module_bytes(transformer)
    assert required_bytes("blocks", {"transformer": transformer}) == (expected, "the transformer")
    with pytest.raises(BudgetError, match=f"streaming its blocks needs at least {format_gb(expected)}"):
        plan_part("transformer", transformer, expected - 1, stream=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"offload": "fast"}, "offload must be one of none, model, blocks"),
    ({"offload": "blocks", "max_vram": -1}, "max_vram must be a positive number"),
    ({"offload": "blocks", "max_vram": "8GB"}, "max_vram must be a number of bytes"),
    ({"offload": "blocks", "device": "gpu0"}, "is not a torch device"),
    ({"offload": None, "max_vram": 2**30}, "max_vram needs an offload mode"),
])
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_pipeline().set_offload(**kwargs)


def test_resident_again_and_to() -> None:
    pipe = tiny_pipeline().set_offload("model", device="cpu")
    assert isinstance(pipe.placement, OffloadPlacement)
    assert isinstance(pipe.set_offload(None).placement, ResidentPlacement)
    pipe.set_offload("blocks", device="cpu")
    assert isinstance(pipe.to("cpu").placement, ResidentPlacement)


# ---------------------------------------------------------------------------------------------------------------
# the streamer itself
# ---------------------------------------------------------------------------------------------------------------


def _stack(n: int = 4, width: int = 8) -> torch.nn.Sequential:
    torch.manual_seed(3)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(n)]).eval()


def test_out_of_order_and_failing_blocks_still_compute_right() -> None:
    stack = _stack()
    x = torch.randn(2, 8)
    expected = [block(x) for block in stack]
    hosts = [block.weight for block in stack]
    ledger = DeviceLedger()
    with torch.no_grad(), BlockStreamer(list(stack), InlineCopier(CPU), ledger) as streamer:
        assert ledger.resident == 2 * streamer.slot_bytes
        for i in (2, 0, 3, 3, 1):  # any order: a block not in a slot is fetched first
            assert torch.equal(stack[i](x), expected[i])
            assert stack[i].weight is hosts[i]  # released after it ran
        with pytest.raises(RuntimeError):
            stack[1](torch.randn(2, 5))  # raises inside the block: still released
        assert stack[1].weight is hosts[1]
        assert torch.equal(stack[2](x), expected[2])
    assert ledger.resident == 0 and all(b.weight is h for b, h in zip(stack, hosts))
    assert not stack[0]._forward_pre_hooks and not stack[0]._forward_hooks  # hooks removed


def test_slots_hold_the_largest_block_packed() -> None:
    stack = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 40), torch.nn.Linear(40, 8))
    with BlockStreamer(list(stack), InlineCopier(CPU), DeviceLedger()) as streamer:
        assert streamer.slot_bytes == max(packed_bytes(b) for b in stack)
    assert packed_bytes(stack[1]) == 1280 + 256  # weight 40x8 fp32 (1280 B), bias 160 B padded to 256


def _lora_file(path, blocks: int, width: int, rank: int = 2):  # noqa: ANN001, ANN202 - Path
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for block in range(blocks):
        for layer in ("to_q", "to_v", "add_k_proj"):
            base = f"diffusion_model.transformer_blocks.{block}.attn.{layer}"
            tensors[f"{base}.lora_down.weight"] = 0.5 * torch.randn(rank, width, generator=gen)
            tensors[f"{base}.lora_up.weight"] = 0.5 * torch.randn(width, rank, generator=gen)
    save_file(tensors, str(path))
    return path


def test_a_lora_loaded_while_offloaded_streams_with_its_blocks(tmp_path) -> None:  # noqa: ANN001 - tmp_path
    lora = _lora_file(tmp_path / "style.safetensors", blocks=4, width=128)
    resident = deep_pipeline()
    resident.load_lora(lora, 0.8)
    reference = _edit(resident)
    pipe = deep_pipeline().set_offload("blocks", device="cpu", max_vram=_budget_for_resident_blocks(deep_pipeline(), 1))
    pipe.load_lora(lora, 0.8)  # adapters land next to the host weights and travel inside their blocks' slots
    assert _same(_edit(pipe), reference)


@pytest.mark.parametrize("tile,exact", [(64, True), (4, False)])
def test_vae_tile_reaches_the_vae(tile: int, exact: bool) -> None:
    pipe = tiny_pipeline()
    reference = _edit(pipe)
    pipe.vae_tile = tile  # 64 latent pixels cover the 16x16 latents: one tile, the same numbers
    tiled = _edit(pipe)
    assert _same(tiled, reference) == exact


@pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")
def test_the_embedded_defaults_compact_vae_ignores_tiling() -> None:
    pipe = load_default_pipeline()
    image = _image(3, (64, 64))
    reference = pipe.edit([image], "make the square blue", steps=2, seed=1)
    pipe.vae_tile = 2
    assert _same(pipe.edit([image], "make the square blue", steps=2, seed=1), reference)
