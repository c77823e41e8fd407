"""The rewards of a DiffusionNFT sampling round: decode the old policy's results and grade each against its prompt.

``NFTRewards`` is built once per run from the run's records (the sources each result is graded against) and, for
the verifiable reward, the ``spec`` each manifest line of ``python -m firered_bench`` carries (the machine-readable
edit its checks read; records do not keep it, so the manifests are read once more for it). ``score`` takes the
``G`` prompts of a round (record indices) and their results ``[G, K, C, h, w]`` (normalised latents), decodes them
with the frozen VAE and returns the rewards ``[G, K]`` (float64) of ``firered_train.prefs.scoring``: the same
functions ``firered prefs`` ranks edits with.

A result whose size is not its first source's (a bucket rounded the sample's size) is resized to it with Lanczos
before grading, because the checks compare pictures pixel for pixel; the synthetic data's 64 px edits need none.
With ``closeness`` > 0 each result whose PSNR to the record's target beats Picture 1's gets that much more reward
(``firered_bench.grade.reward.closer_to_target``). With a ``PreserveConfig`` ``preserve``, each result first keeps
Picture 1's pixels outside the area it changed (``firered_core.preserve.keep_unedited``, the step a model folder
with ``keep_unedited`` applies at inference and the benchmark grades), so the round grades what users get. The
judge reward takes the judge (``nft_judge`` builds it from the config: ``firered_train.prefs.scoring.build_judge``).
Source pictures are decoded on demand and the last few hundred kept (a prompt comes back every epoch).

Public API: ``NFTRewards``, ``decode_results``, ``nft_judge``.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from firered_core.images import to_pil, to_tensor
from firered_core.placement import compute_dtype
from firered_core.preserve import PreserveConfig, keep_unedited

from ..data.readers.jsonl import manifest_paths, read_manifest_lines
from ..data.record import EditRecord
from ..data.skips import SkipLog
from ..prefs.scoring import PrefSample, score_edits

log = logging.getLogger(__name__)

__all__ = ["NFTRewards", "decode_results", "nft_judge"]


@torch.no_grad()
def decode_results(vae: Any, latents: torch.Tensor, sources: Sequence[Image.Image | None] = (),
                   preserve: PreserveConfig | None = None) -> list[Image.Image]:
    """Normalised latents ``[N, C, h, w]`` -> ``N`` RGB pictures (the VAE's decode, one batch).

    With ``preserve``, result ``i`` keeps ``sources[i]`` (its Picture 1, resized to the result; ``None``: no
    source, left as decoded) outside the area it changed, as the pipeline's ``keep_unedited`` does. A source that
    several results share (the ``K`` results of one prompt) is resized and encoded once."""
    latents = latents.to(compute_dtype(vae))
    pixels = vae.decode(latents)  # [N, 3, H, W] in [-1, 1]
    if preserve is None:
        return [to_pil(image.float().cpu()) for image in pixels]
    if len(sources) != len(pixels):
        raise ValueError(f"decode_results: {len(pixels)} results but {len(sources)} sources")
    height, width = pixels.shape[-2:]
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(source) -> its pixels and latents
    out = []
    for i, source in enumerate(sources):
        image = pixels[i:i + 1]
        if source is not None:
            if id(source) not in encoded:
                source_pixels = to_tensor(source.convert("RGB"), width, height).to(image.device, image.dtype)
                encoded[id(source)] = source_pixels, vae.encode(source_pixels)
            source_pixels, source_latents = encoded[id(source)]
            image, _ = keep_unedited(vae, image, latents[i:i + 1], source_pixels, preserve, source_latents)
        out.append(to_pil(image[0].float().cpu()))
    return out


def read_specs(path: str) -> dict[str, dict[str, Any]]:
    """``id -> spec`` of every manifest line under ``path`` (a .jsonl file or a folder of them) that has one."""
    def parse(row: Any, base: Path, where: str) -> tuple[str, Any]:
        if not isinstance(row, dict):  # the trainer's reader has counted it already
            return "", None
        return str(row.get("id", "")), row.get("spec")

    rows, _ = read_manifest_lines(manifest_paths(path), parse, SkipLog())
    return {sid: spec for sid, spec in rows if sid and isinstance(spec, dict)}


def nft_judge(config: Any) -> Any:
    """The chat judge an ``nft`` section with ``reward: judge`` names (``None`` for the other rewards)."""
    if config.reward != "judge":
        return None
    from ..prefs.scoring import build_judge

    return build_judge(config.judge_endpoint, config.judge_local, model=config.judge_model,
                       passes=config.judge_passes, timeout_s=config.judge_timeout_s, key_env=config.judge_key_env)


class NFTRewards:
    """Grades a sampling round's results (see the module docstring)."""

    def __init__(self, records: Sequence[EditRecord], *, reward: str, mode: str, manifest: str | None,
                 closeness: float = 0.0, judge: Any = None, preserve: PreserveConfig | None = None) -> None:
        self.records, self.reward, self.mode, self.closeness, self.judge = records, reward, mode, closeness, judge
        self.preserve = preserve
        self.specs: dict[str, dict[str, Any]] = {}
        if reward == "verifiable":
            if manifest is None:
                raise ValueError("nft.reward: verifiable needs JSONL manifests with a 'spec' per line (data.reader: "
                                 "jsonl, as python -m firered_bench writes them)")
            self.specs = read_specs(manifest)
            missing = [r.id for r in records if r.id not in self.specs]
            if missing:
                raise ValueError(f"nft.reward: verifiable: {len(missing)} of {len(records)} samples have no 'spec' "
                                 f"in {manifest} (e.g. {missing[:3]}); the checks need the edit each sample asks for")
        self._sample = lru_cache(maxsize=512)(self._open)

    def _open(self, index: int) -> PrefSample:
        record = self.records[index]
        sources, target = record.open_images()
        return PrefSample(record.id, record.task, record.instruction or record.instruction_cn, sources, target,
                          self.specs.get(record.id))

    def score(self, vae: Any, prompts: Sequence[int], latents: torch.Tensor) -> torch.Tensor:
        """Rewards ``[G, K]`` (float64, CPU) of results ``latents [G, K, C, h, w]`` of the records ``prompts``."""
        groups, k = latents.shape[:2]
        if groups != len(prompts):
            raise ValueError(f"NFTRewards.score: {len(prompts)} prompts but results for {groups}")
        sources: list[Image.Image | None] = []
        if self.preserve is not None:
            for index in prompts:
                first = self._sample(index).sources
                sources += [first[0] if first else None] * k
        images = decode_results(vae, latents.flatten(0, 1), sources, self.preserve)
        return self.grade(prompts, [images[g * k:(g + 1) * k] for g in range(groups)])

    def grade(self, prompts: Sequence[int], results: Sequence[Sequence[Image.Image]]) -> torch.Tensor:
        """Rewards ``[G, K]`` (float64) of ``results[g]``, the ``K`` pictures made for the record ``prompts[g]``."""
        if self.closeness:
            from firered_bench.grade.reward import closer_to_target
        rows = []
        for index, group in zip(prompts, results, strict=True):
            sample = self._sample(index)
            size = (sample.sources or [sample.target])[0].size
            edits = [im if im.size == size else im.resize(size, Image.LANCZOS) for im in group]
            row = score_edits(self.reward, sample, edits, self.mode, self.judge)
            if self.closeness and sample.sources:
                nearer = closer_to_target(sample.sources[0], edits, sample.target)
                row = [r + self.closeness * c for r, c in zip(row, nearer)]
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)
