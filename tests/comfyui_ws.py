"""A minimal websocket client for ComfyUI's ``/ws?clientId=`` event stream (no third-party package needed).

::

    with EventStream(server.port, client_id="firered-tests") as events:
        server.request("/prompt", {"prompt": graph, "client_id": "firered-tests"})
        for event in events.iter(timeout=600):     # {"type": "progress", "data": {...}}, ...
            ...

Only what a test needs from RFC 6455: the client handshake, reading the server's (unmasked) text frames, keeping
binary ones (ComfyUI's preview images) aside in ``binary`` in the order they came, answering pings. The server
sends its events as JSON text messages. ``feature_flags`` (e.g. ``{"supports_preview_metadata": True}``, what
ComfyUI's front end announces) are sent as the first message, as the front end does, so the server talks to the
test as it talks to a browser; ``preview_frames`` decodes the preview messages.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import time
from typing import Any, Iterator

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class EventStream:
    def __init__(self, port: int, client_id: str, host: str = "127.0.0.1",
                 feature_flags: dict[str, Any] | None = None) -> None:
        self.binary: list[bytes] = []  # binary messages (event type + payload), in arrival order
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the websocket handshake")
            head += chunk
        status, _, self._buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {status[:200]!r}")
        if feature_flags is not None:
            self._send(OP_TEXT, json.dumps({"type": "feature_flags", "data": feature_flags}).encode())

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the websocket")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)  # clients must mask what they send
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = (struct.pack("!B", 0x80 | len(payload)) if len(payload) < 126
                else struct.pack("!BH", 0x80 | 126, len(payload)))  # up to 64 KiB is all a test sends
        self.sock.sendall(struct.pack("!B", 0x80 | opcode) + size + mask + masked)

    def _frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        mask = self._read(4) if second & 0x80 else None
        payload = self._read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON event, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        message, kind = b"", None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                fin, opcode, payload = self._frame()
            except socket.timeout:
                return None
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_CLOSE:
                raise ConnectionError("the server closed the websocket")
            if opcode != OP_CONTINUATION:
                kind, message = opcode, b""
            message += payload
            if fin and kind == OP_TEXT:
                return json.loads(message.decode("utf-8"))
            if fin and kind == OP_BINARY:
                self.binary.append(message)

    def iter(self, timeout: float) -> Iterator[dict[str, Any]]:
        """Events until ``timeout`` seconds have passed in total."""
        deadline = time.monotonic() + timeout
        while (event := self.next_event(max(0.0, deadline - time.monotonic()))) is not None:
            yield event

    def preview_frames(self) -> list[tuple[dict[str, Any], Any]]:
        """The preview images among ``binary`` as ``(metadata, PIL image)``, decoded as the front end decodes them:
        event 1 (a 4-byte image type, then the image; metadata ``{}``) and event 4 (a 4-byte length, that much
        JSON metadata - ``node_id``, ``display_node_id``, ``image_type``... - then the image)."""
        from PIL import Image

        frames = []
        for message in self.binary:
            (event,) = struct.unpack(">I", message[:4])
            if event == 1:
                metadata, data = {}, message[8:]
            elif event == 4:
                (length,) = struct.unpack(">I", message[4:8])
                metadata, data = json.loads(message[8:8 + length].decode("utf-8")), message[8 + length:]
            else:
                continue
            image = Image.open(io.BytesIO(data))
            image.load()
            frames.append((metadata, image))
        return frames

    def close(self) -> None:
        try:
            self._send(OP_CLOSE)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
