"""The VLM judge on a local transformers vision-language model, read straight from its logits.

No text is generated: the chat turn is prefilled with ``Rating: `` and the score is the expectation of the rating
under the model's next-token distribution, restricted to the rating tokens and renormalised over them
(``rating_tokens.rating_masses``). A rating of several tokens (``10`` under Qwen's digit-by-digit tokenizer) costs
one more forward pass with its first token appended, which gives ``p("0" | "1")`` exactly. The result is
deterministic, so ``JudgeConfig.passes`` and ``temperature`` do not apply here; this back-end suits a judge
fine-tuned to answer the rating directly.

The caller owns the model and its processor (nothing is downloaded): ``model(**inputs).logits`` must be
``[1, L, vocab]`` and ``processor(text=[...], images=[...])`` must return the model's inputs as tensors, with a
``tokenizer`` attribute - ``firered_core.encoder.qwen_processor.QwenVLProcessor`` or transformers' processors.
``load_local_judge(folder)`` builds both from a Qwen2.5-VL model folder as transformers saves it (``config.json``,
``*.safetensors`` weights, the tokenizer's files, ``preprocessor_config.json`` or ``processor_config.json``):
offline, safetensors only (pickled ``.bin`` weights are refused, never unpickled).

    judge = TransformersJudge(model, processor, JudgeConfig())      # or: judge = load_local_judge(folder)
    judge_scores([[source]], [result], [instruction], judge.config, judge=judge)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .rating_tokens import Candidates, expectation, rating_masses
from .vlm_judge import JudgeConfig

__all__ = ["TransformersJudge", "load_local_judge", "QWEN_CHAT", "QWEN_IMAGE_SLOT"]

# Qwen2.5-VL's chat layout with the assistant's answer prefilled up to the rating
QWEN_CHAT = "<|im_start|>user\n{images}{prompt}<|im_end|>\n<|im_start|>assistant\nRating: "
QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


class TransformersJudge:
    """Scores edits with a local vision-language model's next-token distribution over the rating tokens."""

    def __init__(self, model: Any, processor: Any, config: JudgeConfig, *, chat: str = QWEN_CHAT,
                 image_slot: str = QWEN_IMAGE_SLOT) -> None:
        self.model, self.processor, self.config = model, processor, config
        self.chat, self.image_slot = chat, image_slot
        self.pieces = self._rating_pieces()

    def _rating_pieces(self) -> dict[str, int]:
        """Token text -> id of every token that the ratings of the scale are written with."""
        tokenizer = self.processor.tokenizer
        pieces = {}
        for text in self.config.scale.texts:
            for token_id in tokenizer.encode(text, add_special_tokens=False):
                pieces[tokenizer.decode([token_id])] = token_id
        return pieces

    def scores(self, sources: Sequence[Sequence[Image.Image]], results: Sequence[Image.Image],
               instructions: Sequence[str]) -> list[float]:
        return [self.score(s, r, i) for s, r, i in zip(sources, results, instructions, strict=True)]

    @torch.no_grad()
    def score(self, sources: Sequence[Image.Image], result: Image.Image, instruction: str) -> float:
        """The normalised expected rating of one edit."""
        prompt = self.config.prompt(instruction, len(sources))
        text = self.chat.format(images=self.image_slot * (len(sources) + 1), prompt=prompt)
        inputs = self.processor(text=[text], images=[*sources, result])
        masses = rating_masses(self.candidates(inputs, ()), self.config.scale,
                               lambda path: self.candidates(inputs, path))
        rating = expectation(masses)
        if rating is None:  # every rating token has probability 0 (e.g. -inf logits): no judgement possible
            raise ValueError("the model gives no probability to any rating token")
        return self.config.scale.normalise(rating)

    def candidates(self, inputs: dict[str, torch.Tensor], path: tuple[str, ...]) -> Candidates:
        """(token, log-probability) of the rating pieces after the prompt followed by the tokens ``path``."""
        logits = self.model(**_extended(inputs, [self.pieces[p] for p in path])).logits  # [1, L, vocab]
        logprobs = torch.log_softmax(logits[0, -1].float(), dim=-1)  # [vocab]
        return [(piece, float(logprobs[token_id])) for piece, token_id in self.pieces.items()]


def _extended(inputs: dict[str, torch.Tensor], token_ids: list[int]) -> dict[str, torch.Tensor]:
    """``inputs`` with text tokens ``token_ids`` appended to its single sequence."""
    if not token_ids:
        return inputs
    out = dict(inputs)
    ids = inputs["input_ids"]
    extra = torch.tensor([token_ids], dtype=ids.dtype, device=ids.device)  # [1, n]
    out["input_ids"] = torch.cat([ids, extra], dim=1)
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.full_like(extra, fill, dtype=inputs[key].dtype)], dim=1)
    return out


def load_local_judge(folder: str | Path, config: JudgeConfig | None = None, *,
                     dtype: torch.dtype = torch.float32) -> TransformersJudge:
    """A ``TransformersJudge`` on the Qwen2.5-VL model saved in ``folder`` (see the module docstring).

    Every missing part raises ``FileNotFoundError`` naming the folder and the file it needs."""
    from ..encoder.qwen_processor import QwenVLProcessor, load_image_processor

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"judge model folder {root} does not exist (a Qwen2.5-VL folder saved by "
                                "transformers: config.json, *.safetensors, tokenizer, preprocessor)")
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: a judge model folder needs config.json")
    if not any(root.glob("*.safetensors")):
        pickled = sorted(p.name for p in root.glob("*.bin"))
        raise FileNotFoundError(f"{root}: no *.safetensors weights"
                                + (f" ({', '.join(pickled)} are pickled and are not read)" if pickled else ""))
    if not (root / "tokenizer.json").is_file() and not (root / "vocab.json").is_file():
        raise FileNotFoundError(f"{root}: a judge model folder needs its tokenizer (tokenizer.json, or vocab.json "
                                "and merges.txt)")
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(root, dtype=dtype, local_files_only=True,
                                                               use_safetensors=True).eval()
    tokenizer = Qwen2TokenizerFast.from_pretrained(root, local_files_only=True)
    return TransformersJudge(model, QwenVLProcessor(tokenizer, load_image_processor(root)), config or JudgeConfig())
