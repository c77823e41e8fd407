"""FireRed Identity Edit: edit a portrait and keep the person recognisable, best of N candidates.

Faces are found in the source with dlib (``firered_core.rewards.identity``, the ``face`` extra, offline). N
candidates (seeds ``seed .. seed + N - 1``) are generated; with ``preserve_face`` the face regions of the source
are put back into each candidate by latent blending (``firered_core.rewards.region_blend``). Each candidate is
scored by identity similarity to the source faces and by how much it changed outside them (an untouched copy
keeps the identity but is no edit): ``firered_core.rewards.identity_edit``. Without a face in the source the node
says so (report output and log) and makes one plain edit; its similarity output is then -1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import edit_runner
from .common import CATEGORY, FireRedNodeError, pils_to_tensor, require_instruction
from .edit import reference_inputs, sampler_input, sampling_inputs
from .model_handle import SOCKET, FireRedModel
from .text_edit import candidate_count, candidate_inputs, single_source

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from firered_core.pipeline import EditResult, FireRedEditPipeline
    from firered_core.rewards.identity import Face
    from firered_core.rewards.identity_edit import IdentityEditConfig

log = logging.getLogger(__name__)

NO_FACE = -1.0  # similarity output when the source has no face


class FireRedIdentityEdit:
    DESCRIPTION = ("Edits an image with a person and keeps their identity: generates N candidates, optionally "
                   "blends the original face regions back in, and returns the candidate that best keeps the face "
                   "while making the edit. Without a face it makes a plain edit and says so.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING")
    RETURN_NAMES = ("image", "similarity", "report")
    OUTPUT_TOOLTIPS = ("the best candidate",
                       "identity similarity of its faces to the source's (1 = same, 0.5 = dlib's same-person "
                       "threshold, -1 = no face in the source)",
                       "faces found and the score of every candidate")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (SOCKET,),
                "image": ("IMAGE",),
                "instruction": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "the edit, e.g. 'put her in a red winter coat'"}),
                **candidate_inputs(),
                "preserve_face": ("BOOLEAN", {"default": True,
                                              "tooltip": "blend the source's face regions back into every "
                                                         "candidate (in latent space, feathered)"}),
                "identity_weight": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05,
                                              "tooltip": "ranking: weight of identity similarity; the rest goes "
                                                         "to edit strength outside the face"}),
                **sampling_inputs(),
            },
            "optional": {**sampler_input(), **reference_inputs()},
        }

    def edit(self, model: FireRedModel, image: Any, instruction: str, candidates: int, preserve_face: bool,
             identity_weight: float, negative_prompt: str, steps: int, true_cfg_scale: float, seed: int,
             width: int, height: int, sampler: str = "model default", size_mode: str = "model area",
             vae_ref_area: int = edit_runner.MODEL_AREA,
             cond_ref_area: int = edit_runner.MODEL_AREA) -> tuple["torch.Tensor", float, str]:
        from firered_core.rewards import MissingExtraError
        from firered_core.rewards.identity import default_embedder
        from firered_core.rewards.identity_edit import IdentityEditConfig, score_identity_edit

        instruction = require_instruction(instruction)
        count = candidate_count(candidates)
        if isinstance(identity_weight, bool) or not isinstance(identity_weight, (int, float)) \
                or not 0.0 <= identity_weight <= 1.0:
            raise FireRedNodeError(f"identity_weight must be a number in [0, 1], got {identity_weight!r}")
        settings = edit_runner.EditSettings.from_inputs(negative_prompt, steps, true_cfg_scale, seed, width, height,
                                                        sampler=sampler, size_mode=size_mode,
                                                        vae_ref_area=vae_ref_area, cond_ref_area=cond_ref_area)
        source = single_source(image)
        embedder = default_embedder()
        try:  # look for faces before generating: a missing extra fails fast
            faces = embedder.faces(source)
        except MissingExtraError as exc:
            raise FireRedNodeError(f"FireRed Identity Edit: {exc}") from exc
        if not faces:
            note = "no face found in the source: made a plain edit (one candidate, no identity scoring)"
            log.warning("FireRed Identity Edit: %s", note)
            (result,) = edit_runner.run_edits(model, [[source]], instruction, settings, what="FireRed Identity Edit")
            return pils_to_tensor([result.image]), NO_FACE, note
        results = edit_runner.run_edits(model, [[source]] * count, instruction, settings,
                                        what="FireRed Identity Edit")
        config = IdentityEditConfig(w_identity=float(identity_weight), w_edit=1.0 - float(identity_weight))
        images = _with_faces_kept(model.loaded.pipeline, results, source, faces, config) if preserve_face \
            else [r.image for r in results]
        scores = [score_identity_edit(source, faces, img, embedder=embedder, config=config) for img in images]
        best = max(range(count), key=lambda i: (scores[i].score, -i))
        lines = [f"{'*' if i == best else ' '} seed {r.seed}: score {s.score:.3f}, similarity "
                 f"{s.identity.similarity:.3f}, change outside the face {s.strength:.3f} ({s.identity.note})"
                 for i, (r, s) in enumerate(zip(results, scores))]
        report = (f"{len(faces)} face(s) in the source; face regions "
                  f"{'kept by latent blending' if preserve_face else 'not blended'}\n" + "\n".join(lines))
        log.info("identity edit:\n%s", report)
        return pils_to_tensor([images[best]]), float(scores[best].identity.similarity), report


def _with_faces_kept(pipeline: "FireRedEditPipeline", results: list["EditResult"], source: "Image.Image",
                     faces: list["Face"], config: "IdentityEditConfig") -> list["Image.Image"]:
    """Every candidate with the source's face regions blended back in latent space."""
    from firered_core.rewards.identity_edit import face_mask
    from firered_core.rewards.region_blend import encode_source, keep_region

    width, height = results[0].width, results[0].height
    mask = face_mask((width, height), faces, grow=config.grow, feather=config.feather,
                     scale=(width / source.width, height / source.height))
    source_latents = encode_source(pipeline.vae, source, width, height)
    return [keep_region(pipeline.vae, r.latents, source_latents, mask) for r in results]


NODE_CLASSES = {"FireRedIdentityEdit": FireRedIdentityEdit}
DISPLAY_NAMES = {"FireRedIdentityEdit": "FireRed Identity Edit"}
