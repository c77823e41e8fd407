"""A loopback stand-in for an OpenAI-compatible chat server: answers each POST with a set reply and records what
it was sent. Used by the VLM tests (the node's hook, the endpoint policy, the real-ComfyUI run).

    with ChatServer(reply=(200, {"choices": [...]})) as server:
        ... server.url (``http://127.0.0.1:PORT/v1``) ...
        server.requests   # [(path, headers, body)]
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


def chat_answer(content: str) -> tuple[int, dict[str, Any]]:
    """A 200 reply carrying ``content`` as the assistant's message."""
    return 200, {"choices": [{"message": {"content": content}}]}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.owner.requests.append((self.path, dict(self.headers), json.loads(raw)))
        status, payload = self.server.owner.reply
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(HTTPServer):
    owner: "ChatServer"


class ChatServer:
    """Bound to 127.0.0.1 on a free port while the ``with`` block runs."""

    def __init__(self, reply: tuple[int, Any] = (200, {})) -> None:
        self.reply = reply
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "ChatServer":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
