"""One client for OpenAI-compatible chat-completions servers (vLLM, llama.cpp's server, Ollama, LM Studio, ...).

The endpoint is a base URL (``http://127.0.0.1:8000/v1``) or the full ``.../chat/completions`` URL; only http and
https are accepted. Pictures travel as PNG data URLs, downscaled to a maximum side. Each request has a timeout;
connection errors, timeouts and HTTP 429/5xx are retried a bounded number of times with exponential backoff, other
HTTP errors (4xx: a wrong model name, a bad key) are not, since repeating them cannot help.

Failures are typed and name the URL: ``JudgeUnreachable`` (no answer: refused, unknown host, timed out after N
tries) and its parent ``JudgeError`` (an answer that is an HTTP error, with the server's message, or that is not a
chat completion). Nothing is ever turned into a silent default. Only the standard library is used, and nothing is
sent anywhere but the URL the caller gives.

    client = ChatClient("http://127.0.0.1:8000/v1", timeout_s=60, retries=2)
    reply = client.complete({"model": "qwen", "messages": [user_message("Describe it", [image])]})
    message_text(reply, client.url)
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from PIL import Image

__all__ = ["ChatClient", "JudgeError", "JudgeUnreachable", "chat_url", "image_data_url", "user_message",
           "message_text"]

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})


class JudgeError(RuntimeError):
    """A chat-completions server answered, but not with a usable chat completion; the message names the URL."""


class JudgeUnreachable(JudgeError):
    """No answer from a chat-completions server (refused, unknown host, timed out) after every try."""


# ---------------------------------------------------------------------------------------------------------------
# Request pieces
# ---------------------------------------------------------------------------------------------------------------


def chat_url(endpoint: str) -> str:
    """The chat-completions URL for ``endpoint`` (a base URL or the full URL); only http(s) is accepted."""
    url = endpoint.strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {endpoint!r}")
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def image_data_url(image: Image.Image, max_side: int) -> str:
    """``image`` as a PNG data URL, downscaled (never upscaled) so that its longest side is at most ``max_side``."""
    preview = image.copy()
    preview.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    preview.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, images: Sequence[Image.Image], max_side: int = 512) -> dict[str, Any]:
    """A user turn holding ``text`` then each image, in OpenAI's multi-part content format."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": image_data_url(p, max_side)}} for p in images]
    return {"role": "user", "content": content}


def message_text(reply: dict[str, Any], url: str) -> str:
    """The text of the first choice of a chat completion, or ``JudgeError`` naming what is missing."""
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError(f"VLM at {url}: the answer is not a chat completion (no choices[0].message.content)")
    if not isinstance(text, str):
        raise JudgeError(f"VLM at {url}: the message content is not text")
    return text


# ---------------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------------


class ChatClient:
    """POSTs chat-completions requests to one server, with a timeout per try and bounded retries."""

    def __init__(self, endpoint: str, *, api_key: str = "", timeout_s: float = 60.0, retries: int = 2,
                 backoff_s: float = 1.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = chat_url(endpoint)
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's JSON answer to ``body``; raises ``JudgeUnreachable`` or ``JudgeError`` otherwise."""
        data = json.dumps(body).encode("utf-8")
        tries = self.retries + 1
        for attempt in range(tries):
            try:
                return self._post(data)
            except _Retryable as exc:
                if attempt + 1 == tries:
                    raise exc.final(tries) from exc.__cause__
                delay = self.backoff_s * 2**attempt
                log.warning("%s; retrying in %.2f s (try %d of %d)", exc.final(attempt + 1), delay, attempt + 2,
                            tries)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.msg if 300 <= exc.code < 400 else _server_message(exc)
            message = f"VLM at {self.url} answered HTTP {exc.code}: {detail}"
            if exc.code in RETRIED_STATUS:
                raise _Retryable(JudgeError, message + " (after {tries})") from exc
            raise JudgeError(message) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise _Retryable(JudgeUnreachable, f"VLM at {self.url} timed out after {{tries}} "
                                 f"({self.timeout_s:g} s each)") from exc
            raise _Retryable(JudgeUnreachable, f"VLM at {self.url} could not be reached after {{tries}}: {reason}"
                             ) from exc
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JudgeError(f"VLM at {self.url} did not answer with JSON: {raw[:200]!r}") from exc
        if not isinstance(reply, dict):
            raise JudgeError(f"VLM at {self.url} did not answer with a JSON object: {raw[:200]!r}")
        return reply


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answered as errors: following one would hand the pictures and the API key to a server that
    was not configured."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirects to {newurl}, which is not followed (the "
                                     "pictures and the API key go only to the configured URL)", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Retryable(Exception):
    """A failure worth another try; ``final`` is the error to raise once the tries are spent.

    ``template`` holds ``{tries}``, filled with "1 try" / "N tries" when the error is raised or logged.
    """

    def __init__(self, kind: type[JudgeError], template: str) -> None:
        super().__init__(template)
        self.kind, self.template = kind, template

    def final(self, tries: int) -> JudgeError:
        return self.kind(self.template.replace("{tries}", f"{tries} {'try' if tries == 1 else 'tries'}"))


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The server's own words for an HTTP error: OpenAI's ``error.message``, else the start of the body."""
    try:
        body = exc.read().decode("utf-8", errors="replace")
    except OSError:
        body = ""
    try:
        error = json.loads(body).get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (json.JSONDecodeError, AttributeError):
        text = None
    return str(text or body.strip()[:200] or exc.reason)
