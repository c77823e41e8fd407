"""File-backed weights (``firered_core.loading.mapped``): block weights used in place from the file, pages handed
back after use, nothing else ever touched."""

from __future__ import annotations

import sys

import pytest
import torch

from firered_core.config import get_preset
from firered_core.loading import load_transformer_file, save_comfy_transformer
from firered_core.loading.mapped import is_mapped, release
from firered_core.transformer import FireRedTransformer

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def _saved(tmp_path, dtype: torch.dtype = torch.bfloat16, preset: str = "tiny"):
    torch.manual_seed(0)
    model = FireRedTransformer(get_preset(preset).transformer, dtype=dtype).eval()
    path = tmp_path / "transformer.safetensors"
    save_comfy_transformer(model, path)
    return path


def _call(model: FireRedTransformer) -> torch.Tensor:
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 32, cfg.in_channels, generator=gen)
    txt = torch.randn(1, 5, cfg.joint_attention_dim, generator=gen)
    with torch.inference_mode():
        return model(x.to(model.img_in.weight.dtype), txt.to(model.img_in.weight.dtype), None,
                     torch.tensor([0.4]), [(1, 4, 4), (1, 4, 4)])


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_blocks_are_mapped_and_compute_like_a_normal_load(tmp_path) -> None:
    path = _saved(tmp_path)
    mapped = load_transformer_file(path, dtype=torch.bfloat16, map_blocks=True)
    plain = load_transformer_file(path, dtype=torch.bfloat16)
    for name, p in mapped.named_parameters():
        assert is_mapped(p) == name.startswith("transformer_blocks."), name
    assert not any(is_mapped(p) for p in plain.parameters())
    assert torch.equal(_call(mapped), _call(plain))
    release(mapped)  # drops pages only; the weights read back the same
    assert torch.equal(_call(mapped), _call(plain))


def test_a_conversion_reads_a_copy_instead(tmp_path) -> None:
    path = _saved(tmp_path, dtype=torch.bfloat16)
    widened = load_transformer_file(path, dtype=torch.float32, map_blocks=True)  # bf16 file, fp32 storage
    assert not any(is_mapped(p) for p in widened.parameters())


def test_release_leaves_ordinary_memory_alone() -> None:
    t = torch.arange(1 << 20, dtype=torch.float32)
    before = t.clone()
    assert release([t]) == 0
    assert torch.equal(t, before)


@linux_only
def test_release_gives_the_pages_back(tmp_path) -> None:
    path = _saved(tmp_path, preset="bench-mid")
    model = load_transformer_file(path, dtype=torch.bfloat16, map_blocks=True)
    blocks = list(model.transformer_blocks.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in blocks)
    start = _rss_file_kib()
    checksum = sum(float(p.detach().float().sum()) for p in blocks)  # touches every page of the blocks
    touched = _rss_file_kib()
    assert (touched - start) * 1024 > nbytes // 2
    released = release(model.transformer_blocks)
    assert released > nbytes * 0.9
    assert (touched - _rss_file_kib()) * 1024 > nbytes // 2
    assert sum(float(p.detach().float().sum()) for p in blocks) == checksum  # read back from the file


def test_gguf_blocks_are_mapped_and_compute_like_a_normal_load(tmp_path) -> None:
    from ..gguf_fixtures import write_transformer_gguf

    torch.manual_seed(0)
    state = FireRedTransformer(get_preset("tiny").transformer).state_dict()
    path = tmp_path / "transformer.gguf"
    write_transformer_gguf(state, path, qtype="Q8_0")
    mapped = load_transformer_file(path, map_blocks=True)
    plain = load_transformer_file(path)
    raw = {n: p for n, p in mapped.named_parameters() if p.dtype == torch.uint8}
    assert raw and all(is_mapped(p) for n, p in raw.items() if n.startswith("transformer_blocks."))
    assert not any(is_mapped(p) for p in plain.parameters())
    assert torch.equal(_call(mapped), _call(plain))
    release(mapped)
    assert torch.equal(_call(mapped), _call(plain))
