"""Optional: ask a vision-language model where the region of interest of each picture is.

Off unless the node's ``vlm_endpoint`` is set. The endpoint is any server speaking OpenAI's chat-completions
protocol (vLLM, llama.cpp's server, Ollama, LM Studio, a hosted API...): give its base URL
(``http://127.0.0.1:8000/v1``) or the full ``.../chat/completions`` URL. One request carries every picture
(downscaled PNGs as data URLs) and the instruction, and asks for JSON ``{"boxes": [[x0, y0, x1, y1] | null, ...]}``
with coordinates as fractions of the picture. Any failure - unreachable server, HTTP error, an answer that is not
that JSON - is a node error saying what went wrong; the node never silently falls back.

Only the standard library is used (urllib), and nothing is sent anywhere unless the user gives an endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any, Sequence

from PIL import Image

from .common import FireRedNodeError
from .composite import Box

log = logging.getLogger(__name__)

PREVIEW_SIDE = 512  # longest side of the pictures sent to the VLM
TIMEOUT_S = 120.0

PROMPT = ("You are given {n} pictures, numbered 1 to {n} in the order shown. An image-editing model will follow "
          "this instruction using them:\n\n{instruction}\n\nFor every picture, give the bounding box of the region "
          "the instruction needs from it (the object or person it refers to), as fractions of the picture's width "
          "and height: [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, or null if the whole picture "
          "is needed. Answer with JSON only, exactly {{\"boxes\": [...]}} with {n} entries.")


def chat_url(endpoint: str) -> str:
    """The chat-completions URL for ``endpoint`` (a base URL or the full URL); only http(s) is accepted."""
    url = endpoint.strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise FireRedNodeError(f"vlm_endpoint must be an http:// or https:// URL, got {endpoint!r}")
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def _data_url(image: Image.Image) -> str:
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    preview.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(model: str, instruction: str, pictures: Sequence[Image.Image]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": PROMPT.format(n=len(pictures),
                                                                            instruction=instruction)}]
    content += [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in pictures]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "temperature": 0}
    if model:
        body["model"] = model
    return body


def ask_boxes(endpoint: str, model: str, instruction: str, pictures: Sequence[Image.Image],
              api_key: str = "") -> dict[int, Box]:
    """1-based picture -> pixel box for every picture the VLM located (null answers are left out)."""
    url = chat_url(endpoint)
    data = json.dumps(request_body(model, instruction, pictures)).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise FireRedNodeError(f"VLM at {url} answered HTTP {exc.code}: {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FireRedNodeError(f"VLM at {url} could not be reached: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FireRedNodeError(f"VLM at {url} did not answer with JSON: {exc}") from exc
    return parse_boxes(_message_text(reply, url), pictures, url)


def _message_text(reply: Any, url: str) -> str:
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise FireRedNodeError(f"VLM at {url}: the answer is not a chat completion (no choices[0].message.content)")
    if not isinstance(text, str):
        raise FireRedNodeError(f"VLM at {url}: the message content is not text")
    return text


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
