"""The frozen face-feature network of the consistency loss: an ArcFace-style improved ResNet (IResNet).

Architecture (Deng et al., ArcFace; Duta et al., improved residual blocks), module names as in the widely used
``iresnet`` implementations so converted weights load with strict keys::

    conv1 3x3 -> bn1 -> prelu                                        [N, w0, S, S]     S = crop
    layer1..4: blocks of  bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride 2 in a layer's first block)
               -> bn3, plus a (conv 1x1 stride 2 -> BN) shortcut      [N, w3, S/16, S/16]
    bn2 -> flatten -> fc -> features (BatchNorm1d) -> L2 normalise   [N, embedding_dim]

Weights come only from a user-provided ``.safetensors`` file (the public ArcFace checkpoints are pickled ``.pth``
files with their own licences: convert them yourself with ``safetensors.torch.save_file``; this code never
unpickles). Loading is strict: a missing or unexpected key is an error that lists them, except BatchNorm's
``num_batches_tracked`` counters, which eval mode never reads. The loaded network is in eval mode with every
parameter frozen; gradients still flow through it to its input.

``face_feature_config_of`` reads the depth, widths and embedding size from a file's tensor shapes (no tensor is
loaded), so any of the presets, or a smaller network, loads without naming its shape.

Public API: ``FaceFeatureConfig``, ``FACE_FEATURE_PRESETS``, ``FaceFeatures``, ``face_feature_config_of``,
``load_face_features``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["FaceFeatureConfig", "FACE_FEATURE_PRESETS", "FaceFeatures", "face_feature_config_of",
           "load_face_features"]


@dataclass(frozen=True)
class FaceFeatureConfig:
    """Shape of an IResNet; the presets are the common ArcFace depths."""

    layers: tuple[int, int, int, int] = (3, 4, 14, 3)  # blocks per stage (r50); more = deeper = slower, better
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # channels per stage (the stem has widths[0])
    embedding_dim: int = 512  # ArcFace's embedding size
    crop: int = 112  # input side; four stride-2 stages leave crop / 16 per side for the fc layer

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise ValueError(f"layers must be 4 positive block counts, got {self.layers!r}")
        if len(self.widths) != 4 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be 4 positive channel counts, got {self.widths!r}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim!r}")
        if self.crop < 16 or self.crop % 16:
            raise ValueError(f"crop must be a positive multiple of 16, got {self.crop!r}")


FACE_FEATURE_PRESETS = {
    "r18": FaceFeatureConfig(layers=(2, 2, 2, 2)),
    "r34": FaceFeatureConfig(layers=(3, 4, 6, 3)),
    "r50": FaceFeatureConfig(layers=(3, 4, 14, 3)),
    "r100": FaceFeatureConfig(layers=(3, 13, 30, 3)),
}


class _Block(nn.Module):
    """IResNet basic block: BN -> conv -> BN -> PReLU -> conv (stride) -> BN, plus the (projected) input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class FaceFeatures(nn.Module):
    """Aligned face crops ``[N, 3, crop, crop]`` in [-1, 1] -> unit embeddings ``[N, embedding_dim]``."""

    def __init__(self, config: FaceFeatureConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.conv1 = nn.Conv2d(3, w[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0], eps=1e-5)
        self.prelu = nn.PReLU(w[0])
        ins = (w[0], *w[:3])
        for i, (n, c_in, c_out) in enumerate(zip(config.layers, ins, w), start=1):
            blocks = [_Block(c_in, c_out, 2)] + [_Block(c_out, c_out, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm2d(w[3], eps=1e-5)
        side = config.crop // 16
        self.fc = nn.Linear(w[3] * side * side, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.crop
        if x.ndim != 4 or x.shape[1:] != (3, c, c):
            raise ValueError(f"face crops must be [N, 3, {c}, {c}], got shape {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))  # [N, w0, c, c]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, w3, c/16, c/16]
        x = self.fc(torch.flatten(self.bn2(x), 1))  # [N, embedding_dim]
        return F.normalize(self.features(x), dim=-1)


def _key_problems(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of ``state`` for ``model``; absent ``num_batches_tracked`` counters are fine."""
    expected = set(model.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    return missing, sorted(set(state) - expected)


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must be a .safetensors file (pickled checkpoints are never loaded), got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"face-feature weights not found: {path}")
    return path


def face_feature_config_of(path: str | Path, crop: int) -> FaceFeatureConfig:
    """The ``FaceFeatureConfig`` of the IResNet in ``path`` for ``crop`` x ``crop`` inputs, from tensor shapes:
    blocks per stage from the ``layerN.K.`` names, widths from each stage's first ``conv1``, the embedding size
    from ``fc``; ``fc``'s input must be ``widths[3] * (crop / 16)^2``."""
    path = _checked_path(path)
    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    blocks = [sorted({int(k.split(".")[1]) for k in shapes if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    if any(not b or b != list(range(len(b))) for b in blocks) or "fc.weight" not in shapes:
        raise ValueError(f"{path} is not an IResNet face-feature network: it needs blocks layer1.0 ... layer4.0 "
                         f"numbered from 0 and an fc layer")
    widths = tuple(shapes[f"layer{i}.0.conv1.weight"][0] for i in range(1, 5))
    embedding_dim, fc_in = shapes["fc.weight"]
    side = crop // 16
    if fc_in != widths[3] * side * side:
        raise ValueError(f"{path} takes {fc_in // widths[3]} positions per channel into its fc layer, but a {crop} "
                         f"crop gives {side * side} ({side}x{side}): set the crop the network was trained on")
    return FaceFeatureConfig(layers=tuple(len(b) for b in blocks), widths=widths, embedding_dim=embedding_dim,
                             crop=crop)


def load_face_features(path: str | Path, config: FaceFeatureConfig, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> FaceFeatures:
    """The network of ``config`` with the weights of the ``.safetensors`` file ``path``: eval mode, frozen."""
    path = _checked_path(path)
    state = load_file(str(path))
    model = FaceFeatures(config)
    missing, unexpected = _key_problems(model, state)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the face-feature network {config}: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
    model.load_state_dict(state, strict=False)  # strictness checked above, with the counters allowed to be absent
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("face-feature network loaded from %s (%d tensors)", path, len(state))
    return model
