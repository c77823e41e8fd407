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

| subpackage | modules | job |
|---|---|---|
| ``scenes`` | ``palette``, ``scene``, ``render``, ``pixel_ops`` | named colours, shapes, words; scene dataclasses; rendering with object and text masks; whole-image ops |
| ``grade`` | ``metrics``, ``criteria``, ``checks``, ``reward`` | PSNR/SSIM (kornia), pixel criteria, per-op success checks, rewards from the checks |
| ``generate`` | ``scene_sampler``, ``phrasing``, ``plan``, ``edits_scene``, ``edits_pixel``, ``generator``, ``writer`` | random scenes, instruction templates, edit plans and makers, ``generate(split, n, seed)``, dataset folders |
| ``evaluate`` | ``bench``, ``summary``, ``report``, ``compare`` | ``firered bench synthetic``, its figures and report, ``firered bench-compare`` |

Layers run in that order (each imports only the ones before it); the package imports ``firered_core`` and nothing
else of the project. ``python -m firered_bench OUT_DIR`` writes a dataset (``cli``).
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
