"""Activation memory of each phase of an edit at full size, measured without a GPU (used by memory_table.py).

Every phase of ``FireRedEditPipeline.edit`` runs on fake tensors (``FakeTensorMode``: shapes, dtypes and devices,
no values, no memory) with compute on ``cuda:0``, through the pipeline's own ``OffloadPlacement`` (offload
``model``: one component on the device at a time), while ``DeviceMemoryTracker`` counts the live device storages
after every op. A phase's activation peak is the most live bytes *beyond the placed weights* (the placement's
ledger) during the phase; it includes the inputs that phase keeps on the device (condition embeddings, reference
tokens, latents), and for weights stored narrower than the compute dtype the transient upcast copies the layers make.

The phases, as the pipeline runs them for a ``side`` x ``side`` edit with ``refs`` references of the same size and
true CFG:

1. ``encoder``: Qwen2.5-VL's language model over the edit template with ``refs`` condition images (196 image tokens
   each at 384^2), twice (instruction and negative prompt), keeping all hidden states as the encoder asks for them.
   The vision tower does not run: its patch bookkeeping reads values (``grid_thw.tolist()``), which fake tensors do
   not have; it holds ~1.3 M activations per image (784 patches x 1280 wide per layer), small beside the rest;
2. ``vae_encode``: each reference at ``side`` x ``side``;
3. ``transformer``: one sampling step, both CFG branches and their combination;
4. ``vae_decode``: the result.

Attention runs as the fused kernels a GPU picks (flash / memory-efficient attention): they allocate their output
and a float32 log-sum-exp per query, never the score matrix. A fake device cannot select those kernels itself (it
has no driver), so ``FusedAttention`` allocates exactly those outputs in place of the call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from firered_core.config import TransformerConfig, VAEConfig
from firered_core.latents import pack_latents
from firered_core.offload import DeviceMemoryTracker, OffloadPlacement
from firered_core.offload.weights import set_entry, weight_entries
from firered_core.ops import adopt
from firered_core.transformer import FireRedTransformer
from firered_core.vae import FireRedVAE

PHASES = ("encoder", "vae_encode", "transformer", "vae_decode")
IMAGE_TOKENS = 196  # a condition image of ~384^2 pixels: 28 x 28 patches of 14 px, merged 2 x 2
TEMPLATE_TOKENS = 64 + 30  # the edit template's dropped prefix + instruction and closing tokens
BLOCK_TOKENS = 6  # "Picture i: <|vision_start|> ... <|vision_end|>" around each image's tokens


@dataclass(frozen=True)
class Workload:
    """What is measured: the architectures and the edit's size."""

    transformer: TransformerConfig
    vae: VAEConfig
    encoder: dict[str, Any]  # Qwen2_5_VLConfig keyword arguments
    side: int  # pixels of the output and of each reference, per side
    refs: int

    @property
    def encoder_tokens(self) -> int:
        return TEMPLATE_TOKENS + self.refs * (IMAGE_TOKENS + BLOCK_TOKENS)

    @property
    def condition_tokens(self) -> int:
        return self.encoder_tokens - 64


class FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as a fused GPU kernel allocates: its output and a float32 log-sum-exp."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, v = args[0], args[2]
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # [B, H, Lq, Dv]
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # [B, H, Lq], freed when the kernel returns
        del lse
        return out


class PhaseWatch:
    """Per phase, the most live device bytes beyond the placement's ledger."""

    def __init__(self, placement: OffloadPlacement) -> None:
        self.placement = placement
        self.phase = ""
        self.peaks: dict[str, int] = {}

    def __call__(self, tracker: DeviceMemoryTracker) -> None:
        extra = tracker.live - self.placement.ledger.resident
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), extra)

    @contextlib.contextmanager
    def during(self, phase: str, part: str, module: nn.Module) -> Iterator[None]:
        self.phase = phase
        with self.placement.use(part, module):
            yield


def _fake_copy(module: nn.Module, dtype: torch.dtype, linear_dtype: torch.dtype) -> nn.Module:
    """``module`` (built on meta) with fake CPU tensors: floating ones in ``dtype``, Linear weights in
    ``linear_dtype``. Call under the fake mode."""
    linear_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    for owner, name, is_param, t in list(weight_entries(module)):
        want = linear_dtype if id(t) in linear_weights else dtype if t.is_floating_point() else t.dtype
        set_entry(owner, name, is_param, torch.empty(t.shape, dtype=want, device="cpu"))
    return module


def build_on_meta(w: Workload) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(encoder, transformer, VAE) with shapes only: the Qwen2.5-VL backbone (no LM head, as the loader keeps it),
    the MMDiT and the VAE."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    with torch.device("meta"):
        transformer = FireRedTransformer(w.transformer).eval()
        vae = FireRedVAE(w.vae).eval()
        encoder = Qwen2_5_VLModel(Qwen2_5_VLConfig(**w.encoder)).eval()
    adopt(encoder)  # as the loader does: its Linear layers cast narrow weights at compute time
    return encoder, transformer, vae


def _encode(encoder: nn.Module, w: Workload, device: torch.device) -> torch.Tensor:
    """The language model over the template's tokens; the kept rows, as the encoder packs them."""
    tokens = w.encoder_tokens
    ids = torch.zeros(1, tokens, dtype=torch.long, device=device)
    positions = torch.zeros(3, 1, tokens, dtype=torch.long, device=device)  # 3-D M-RoPE positions (given)
    embeds = encoder.get_input_embeddings()(ids)  # [1, T, D]
    out = encoder.language_model(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True,
                                 use_cache=False)
    return out.hidden_states[-1][:, 64:].clone()  # [1, L, D]


def measure(w: Workload, dtype: torch.dtype, linear_dtype: torch.dtype,
            device: str = "cuda:0") -> dict[str, int]:
    """Activation peak in bytes of each phase (``PHASES``) for weights in ``dtype`` (Linear weights in
    ``linear_dtype``), computing in ``dtype``."""
    encoder, transformer, vae = build_on_meta(w)
    with FakeTensorMode(), FusedAttention(), torch.inference_mode():
        encoder = _fake_copy(encoder, dtype, linear_dtype)
        transformer = _fake_copy(transformer, dtype, linear_dtype)
        vae = _fake_copy(vae, dtype, dtype)
        placement = OffloadPlacement("model", device)
        watch = PhaseWatch(placement)
        dev, f = placement.device, w.vae.spatial_compression
        with DeviceMemoryTracker(dev.type, on_op=watch):
            with watch.during("encoder", "encoder", encoder):
                condition = [_encode(encoder, w, dev) for _ in range(2)]  # instruction, negative prompt
            with watch.during("vae_encode", "vae", vae):
                refs = [pack_latents(vae.encode(torch.empty(1, 3, w.side, w.side, dtype=dtype, device=dev)), 2)
                        for _ in range(w.refs)]
            ref_tokens = torch.cat(refs, dim=1)
            side = w.side // f
            x = torch.empty(1, side * side // 4, w.transformer.in_channels, dtype=dtype, device=dev)
            shapes = [(1, side // 2, side // 2)] * (1 + w.refs)
            with watch.during("transformer", "transformer", transformer):
                hidden = torch.cat([x, ref_tokens], dim=1)
                t = torch.full((1,), 0.5, device=dev)
                cond = transformer(hidden, condition[0], None, t, shapes)
                uncond = transformer(hidden, condition[1], None, t, shapes)
                x = x + 0.1 * (uncond + 4.0 * (cond - uncond))  # CFG combination and the Euler step
                del cond, uncond
            with watch.during("vae_decode", "vae", vae):
                vae.decode(torch.empty(1, w.vae.z_dim, side, side, dtype=dtype, device=dev))
    return {phase: watch.peaks.get(phase, 0) for phase in PHASES}


def fake_device() -> str:
    """``cuda:0`` with a CUDA build of torch (fake CUDA tensors, fused kernels chosen as on a GPU), else ``meta``: a
    CPU-only build cannot run every op on fake CUDA tensors, and decomposes some fused kernels (e.g. RMSNorm) into
    steps with float32 temporaries, so its numbers run a little high."""
    return "cuda:0" if torch.version.cuda is not None else "meta"
