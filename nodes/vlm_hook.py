"""Optional: ask a vision-language model where the region of interest of each picture is.

Off unless the node's ``vlm_endpoint`` is set. The endpoint is any allowed server speaking OpenAI's chat-completions
protocol (vLLM, llama.cpp's server, Ollama, LM Studio, a hosted API...): give its base URL
(``http://127.0.0.1:8000/v1``) or the full ``.../chat/completions`` URL. One request carries every picture
(downscaled PNGs as data URLs) and the instruction, and asks for JSON ``{"boxes": [[x0, y0, x1, y1] | null, ...]}``
with coordinates as fractions of the picture. Any failure - unreachable server, HTTP error, an answer that is not
that JSON - is a node error saying what went wrong; the node never silently falls back.

The HTTP side (timeouts, data URLs, error wording) is ``firered_core.rewards.chat_client``, shared with the VLM
judge reward; this node asks once, without retries, since the user is waiting. Requests go only to a ``Target``
that ``vlm_endpoints`` resolved: a loopback server or one the server's owner configured, never a URL a workflow
brought along.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Sequence

from PIL import Image

from firered_core.rewards.chat_client import ChatClient, JudgeError, message_text, user_message

from .common import FireRedNodeError
from .composite import Box
from .vlm_endpoints import Target

log = logging.getLogger(__name__)

PREVIEW_SIDE = 512  # longest side of the pictures sent to the VLM
TIMEOUT_S = 120.0

PROMPT = ("You are given {n} pictures, numbered 1 to {n} in the order shown. An image-editing model will follow "
          "this instruction using them:\n\n{instruction}\n\nFor every picture, give the bounding box of the region "
          "the instruction needs from it (the object or person it refers to), as fractions of the picture's width "
          "and height: [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, or null if the whole picture "
          "is needed. Answer with JSON only, exactly {{\"boxes\": [...]}} with {n} entries.")


def request_body(model: str, instruction: str, pictures: Sequence[Image.Image]) -> dict[str, Any]:
    prompt = PROMPT.format(n=len(pictures), instruction=instruction)
    body: dict[str, Any] = {"messages": [user_message(prompt, pictures, PREVIEW_SIDE)], "temperature": 0}
    if model:
        body["model"] = model
    return body


def ask_boxes(target: Target, model: str, instruction: str, pictures: Sequence[Image.Image]) -> dict[int, Box]:
    """1-based picture -> pixel box for every picture the VLM at ``target`` located (null answers are left out)."""
    if not isinstance(target, Target):
        raise TypeError(f"target must be a vlm_endpoints.Target resolved by the endpoint policy, got {target!r}")
    client = ChatClient(target.url, api_key=target.api_key, timeout_s=TIMEOUT_S, retries=0)
    try:
        text = message_text(client.complete(request_body(model, instruction, pictures)), client.url)
    except JudgeError as exc:
        raise FireRedNodeError(str(exc)) from exc
    return parse_boxes(text, pictures, client.url)


def parse_boxes(text: str, pictures: Sequence[Image.Image], source: str = "VLM") -> dict[int, Box]:
    """The boxes in the VLM's answer ``text`` (code fences and prose around the JSON are tolerated)."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        boxes = json.loads(match.group(0))["boxes"] if match else None
    except (json.JSONDecodeError, KeyError, TypeError):
        boxes = None
    if not isinstance(boxes, list) or len(boxes) != len(pictures):
        raise FireRedNodeError(f"{source}: expected JSON {{\"boxes\": [...]}} with {len(pictures)} entries, got: "
                               f"{text[:200]!r}")
    out = {}
    for i, (box, picture) in enumerate(zip(boxes, pictures), start=1):
        if box is None:
            continue
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
                or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1)):
            raise FireRedNodeError(f"{source}: box {i} is not [x0, y0, x1, y1] fractions with x0 < x1, y0 < y1: "
                                   f"{box!r}")
        w, h = picture.size
        out[i] = (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))
    log.info("VLM boxes: %s", out)
    return out
