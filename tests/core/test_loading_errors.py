"""Every way a weight file can be wrong ends in one WeightFileError that names the file and the problem.

Covered: missing file/folder/shard, empty and truncated files, bad headers, pickles by extension and by content
(a ``.safetensors`` that is really a zip or a pickle), GGUF and Git LFS pointers, shape mismatches (each key with
expected and found shapes, all reported at once), unknown architectures (with sample keys), files of the wrong
kind, pickle-only diffusers components.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from firered_core.config import get_preset
from firered_core.loading import (WeightFileError, load_components, load_transformer_file, load_vae_file,
                                  open_sharded, open_weights, read_header, save_comfy_transformer,
                                  save_diffusers_folder)
from firered_core.transformer import FireRedTransformer
from firered_core.vae import FireRedVAE

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def tiny() -> tuple[FireRedTransformer, FireRedVAE]:
    return FireRedTransformer(TINY.transformer).eval(), FireRedVAE(TINY.vae).eval()


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(WeightFileError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _small_file(path: Path) -> Path:
    save_file({"a.weight": torch.randn(64, 64), "b.weight": torch.randn(64, 64)}, str(path))
    return path


# ---------------------------------------------------------------------------------------------------------------
# missing things
# ---------------------------------------------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path: Path) -> None:
    msg = _error(read_header, tmp_path / "absent.safetensors")
    assert "absent.safetensors" in msg and "not found" in msg
    msg = _error(load_components, tmp_path / "no_such_model")
    assert "no_such_model" in msg and "not found" in msg
    (tmp_path / "plain_folder").mkdir()
    msg = _error(load_components, tmp_path / "plain_folder")
    assert "plain_folder" in msg and "model_index.json" in msg


def test_missing_shard_names_the_shard_and_the_index(tmp_path: Path, tiny) -> None:
    folder = save_diffusers_folder(*tiny, TINY.scheduler, tmp_path / "m", max_shard_bytes=50_000)
    shard = sorted((folder / "transformer").glob("*-of-*.safetensors"))[1]
    shard.unlink()
    msg = _error(load_components, folder, load_encoder=False)
    assert shard.name in msg and "index.json" in msg and "missing" in msg


def test_missing_component_folder(tmp_path: Path, tiny) -> None:
    folder = save_diffusers_folder(*tiny, TINY.scheduler, tmp_path / "m")
    for f in (folder / "vae").iterdir():
        f.unlink()
    (folder / "vae").rmdir()
    msg = _error(load_components, folder, load_encoder=False)
    assert "'vae/'" in msg and "m" in msg


def test_pickle_only_component_is_refused(tmp_path: Path, tiny) -> None:
    folder = save_diffusers_folder(*tiny, TINY.scheduler, tmp_path / "m")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04.")
    msg = _error(load_components, folder, load_encoder=False)
    assert "diffusion_pytorch_model.bin" in msg and "pickle" in msg


# ---------------------------------------------------------------------------------------------------------------
# broken files
# ---------------------------------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    msg = _error(open_weights, path)
    assert "empty.safetensors" in msg and "empty" in msg


def test_truncated_file_names_the_first_tensor_cut_off(tmp_path: Path) -> None:
    path = _small_file(tmp_path / "cut.safetensors")
    header = read_header(path)
    second = list(header.values())[1]
    with open(path, "r+b") as f:
        f.truncate(second.start + 10)  # keep the first tensor and a few bytes of the second
    msg = _error(open_weights, path)
    assert "cut.safetensors" in msg and "truncated" in msg and f"'{second.key}'" in msg


def test_truncated_inside_the_header(tmp_path: Path) -> None:
    path = _small_file(tmp_path / "cut_header.safetensors")
    with open(path, "r+b") as f:
        f.truncate(40)
    msg = _error(read_header, path)
    assert "cut_header.safetensors" in msg and "truncated" in msg


def test_corrupt_header_json(tmp_path: Path) -> None:
    path = tmp_path / "bad_json.safetensors"
    body = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'  # unterminated
    path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    msg = _error(read_header, path)
    assert "bad_json.safetensors" in msg and "not valid JSON" in msg


def test_unknown_dtype_and_inconsistent_offsets(tmp_path: Path) -> None:
    for name, entry, problem in [("dtype.safetensors", {"dtype": "Q4_K", "shape": [1], "data_offsets": [0, 4]},
                                  "unknown or unsupported dtype"),
                                 ("size.safetensors", {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},
                                  "needs 8 bytes")]:
        body = json.dumps({"t": entry}).encode()
        path = tmp_path / name
        path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 8)
        msg = _error(read_header, path)
        assert name in msg and problem in msg and "'t'" in msg


# ---------------------------------------------------------------------------------------------------------------
# formats that are refused
# ---------------------------------------------------------------------------------------------------------------


def test_pickle_extension_is_refused_without_opening(tmp_path: Path) -> None:
    for name in ("model.ckpt", "model.pt", "model.pth", "pytorch_model.bin"):
        path = tmp_path / name
        path.write_bytes(b"anything")
        msg = _error(open_weights, path)
        assert name in msg and "pickle" in msg and "safetensors" in msg


def test_safetensors_name_with_torch_save_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "disguised.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a zip archive holding a pickle
    msg = _error(load_components, [path])
    assert "disguised.safetensors" in msg and "zip" in msg and "pickle" in msg


def test_safetensors_name_with_raw_pickle_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "raw_pickle.safetensors"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    msg = _error(read_header, path)
    assert "raw_pickle.safetensors" in msg and "pickle" in msg


def test_gguf_and_lfs_pointer_are_named(tmp_path: Path) -> None:
    gguf = tmp_path / "model.safetensors"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    assert "GGUF" in _error(read_header, gguf)
    lfs = tmp_path / "pointer.safetensors"
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    msg = _error(read_header, lfs)
    assert "pointer.safetensors" in msg and "Git LFS pointer" in msg


# ---------------------------------------------------------------------------------------------------------------
# files that do not fit
# ---------------------------------------------------------------------------------------------------------------


def test_shape_mismatches_name_every_key_with_expected_and_found(tmp_path: Path, tiny) -> None:
    path = save_comfy_transformer(tiny[0], tmp_path / "tiny_transformer.safetensors")
    wider = dataclasses.replace(TINY.transformer, joint_attention_dim=48)
    msg = _error(load_transformer_file, path, config=wider)
    assert "tiny_transformer.safetensors" in msg and "shape mismatches" in msg
    assert "'txt_in.weight': model expects [32, 48], file has [32, 32]" in msg
    assert "'txt_norm.weight': model expects [48], file has [32]" in msg


def test_missing_and_unexpected_keys_are_reported_together(tmp_path: Path, tiny) -> None:
    state = {k: v.contiguous() for k, v in tiny[0].state_dict().items()}
    state.pop("proj_out.bias")
    state["transformer_blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    msg = _error(load_transformer_file, path, config=TINY.transformer)
    assert "odd.safetensors" in msg
    assert "1 missing keys: proj_out.bias" in msg and "1 unexpected keys: transformer_blocks.0.extra.weight" in msg


def test_unknown_architecture_lists_sample_keys(tmp_path: Path) -> None:
    path = _small_file(tmp_path / "mystery.safetensors")
    msg = _error(load_components, [path])
    assert "mystery.safetensors" in msg and "unknown architecture" in msg and "a.weight" in msg


def test_wrong_kind_of_file(tmp_path: Path, tiny) -> None:
    path = save_comfy_transformer(tiny[0], tmp_path / "t.safetensors")
    msg = _error(load_vae_file, path)
    assert "t.safetensors" in msg and "is a transformer file, expected a vae" in msg
    lora = tmp_path / "lora.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64)}, str(lora))
    msg = _error(load_components, [path, lora])
    assert "lora.safetensors" in msg and "LoRA" in msg
    msg = _error(load_components, [path])
    assert "no vae file" in msg


def test_wan22_vae_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "wan22_vae.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(1), "decoder.middle.0.residual.0.gamma": torch.zeros(1),
               "encoder.downsamples.0.downsamples.0.residual.0.gamma": torch.zeros(1)}, str(path))
    msg = _error(load_vae_file, path)
    assert "wan22_vae.safetensors" in msg and "Wan 2.2" in msg


def test_bad_shard_index(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{not json")
    assert "model.safetensors.index.json" in _error(open_sharded, index)
    index.write_text(json.dumps({"metadata": {}}))
    assert "weight_map" in _error(open_sharded, index)
