"""Network guard for the Python processes the integration tests start (ComfyUI's server and snippets).

``tests/comfyui_harness.py`` puts this folder on ``PYTHONPATH``, so Python imports this module at start-up,
before ComfyUI or the plugin. From then on a TCP/UDP connection to anything but the loopback interface, and a
name lookup of anything but a loopback name or an address literal, raises ``OSError`` and leaves a line starting
with ``MARKER`` (and where it came from) on stderr, which the tests read from the server log. The machines here have
no internet anyway; the guard makes an attempt visible instead of a timeout somewhere.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import traceback

MARKER = "FIRERED-NETGUARD blocked"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host is None or not isinstance(host, str):
        return True
    name = host.split("%", 1)[0].strip("[]").lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a host name other than localhost
    return address.is_loopback or address.is_unspecified


def _refuse(what: str) -> None:
    where = "".join(traceback.format_stack(limit=8)[:-2])
    sys.stderr.write(f"{MARKER} {what}\n{where}\n")
    sys.stderr.flush()
    raise OSError(f"network access is blocked in the FireRed tests: {what}")


def _guard_connect(original):  # noqa: ANN001, ANN202
    def connect(self, address):  # noqa: ANN001, ANN202
        if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) \
                and not _is_local(address[0]):
            _refuse(f"a connection to {address!r}")
        return original(self, address)
    return connect


def _guard_lookup(original):  # noqa: ANN001, ANN202
    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN202
        if not _is_local(host):
            _refuse(f"a name lookup of {host!r}")
        return original(host, *args, **kwargs)
    return getaddrinfo


socket.socket.connect = _guard_connect(socket.socket.connect)
socket.socket.connect_ex = _guard_connect(socket.socket.connect_ex)
socket.getaddrinfo = _guard_lookup(socket.getaddrinfo)
