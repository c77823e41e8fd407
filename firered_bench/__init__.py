"""firered_bench: seeded synthetic edit data whose targets are exact, and checks that grade edits.

Small square scenes (64x64 by default, any multiple of 16) of shapes, simple objects and short words on solid,
gradient or striped backgrounds are described as data (``scene.Scene``); an edit changes the description and the
target is that description rendered again, so it is exact - no inpainting, no approximations. Whole-image edits
(brightness, mirror, posterize, restoration of noise/blur/underexposure) are deterministic pixel ops.

::

    from firered_bench import generate, check, write_dataset

    for s in generate("heldout", 100, seed=0):          # SyntheticSample: sources, target, texts, spec
        result = my_model(s.sources, s.instruction)
        verdict = check(s.sources, result, s.spec, target=s.target)   # CheckResult: passed, failures, metrics

    write_dataset("data/syn_train", "train", n=10_000, seed=0, size=64)   # PNGs + manifest.jsonl for read_jsonl

Categories (the ``task`` of each record) mirror REDEdit-Bench where a program can make the edit truthfully:
t2i (0 sources), add, remove, replace, color, background, compose (move; insert from Picture 2 = 2 sources),
adjust (resize, brightness, contrast), text (replace or write a quoted word), lowlevel (denoise, deblur,
brighten), extract, viewpoint (mirror, rotate), stylize (posterize, outline). Every op has at least five English
and five Chinese instruction templates with synonyms (``phrasing``).

The held-out split is disjoint from training by content: a plan's fingerprint decides its split (``generator``).

| module | job |
|---|---|
| ``palette`` | named colours, shapes, positions, sizes, words (English + Chinese) |
| ``scene`` | scene description dataclasses and grid geometry |
| ``scene_sampler`` | random scenes |
| ``render`` | scene -> pixels, object and text masks |
| ``pixel_ops`` | named whole-image ops |
| ``phrasing`` | instruction templates |
| ``plan`` | ``EditPlan``: an edit before rendering, with its spec |
| ``edits_scene`` / ``edits_pixel`` | the edit makers |
| ``generator`` | ``generate(split, n, seed)`` |
| ``writer`` / ``cli`` | dataset folders on disk |
| ``metrics`` / ``criteria`` / ``checks`` | PSNR, SSIM, pixel criteria, per-op success checks |
"""

from .grade.checks import CheckResult, CheckThresholds, check
from .generate.generator import SPLITS, TASK_OPS, GeneratorConfig, SyntheticSample, generate
from .grade.metrics import psnr, ssim
from .generate.scene_sampler import SceneOptions
from .generate.writer import write_dataset

__all__ = [
    "SPLITS", "TASK_OPS", "CheckResult", "CheckThresholds", "GeneratorConfig", "SceneOptions", "SyntheticSample",
    "check", "generate", "psnr", "ssim", "write_dataset",
]
