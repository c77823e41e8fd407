"""Which VLM servers the Multi-Image node may send pictures to: the server's choice, never the workflow's.

A workflow is shared and run by people who did not write it, so its ``vlm_endpoint`` widget cannot be trusted to
name where the user's pictures go. It may only pick:

- a loopback server (``127.0.0.0/8``, ``::1``, ``localhost``): it cannot leave the machine, so it needs no
  configuration (``FIRERED_VLM_ALLOW_LOOPBACK=0`` turns this default off);
- an endpoint the server's owner configured, by its name or by its URL:

  - ``FIRERED_VLM_ENDPOINTS``: comma-separated ``name=url`` entries or plain URLs
    (``qwen=http://gpu-box:8000/v1,http://10.0.0.5:8080/v1``);
  - the JSON file ``<ComfyUI user folder>/firered/vlm_endpoints.json`` (``$FIRERED_VLM_CONFIG`` names another
    file): ``{"endpoints": [{"name": "qwen", "url": "https://...", "api_key_env": "QWEN_API_KEY"}]}``. The API key
    is read from the environment variable named there and sent as ``Authorization: Bearer``; keys never live in
    a workflow, in this file or in an error message.

A URL matches a configured one when both lead to the same chat-completions URL (scheme, host, port and path).
The configuration is read at every use, so an edited file applies from the next run. Anything else is refused
before a picture is encoded, with a message saying which variable or file to edit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from firered_core.rewards.chat_client import chat_url

from . import comfy_bridge
from .common import FireRedNodeError

log = logging.getLogger(__name__)

ENDPOINTS_ENV = "FIRERED_VLM_ENDPOINTS"
CONFIG_ENV = "FIRERED_VLM_CONFIG"
LOOPBACK_ENV = "FIRERED_VLM_ALLOW_LOOPBACK"
CONFIG_FILE = "firered/vlm_endpoints.json"  # under ComfyUI's user folder
ENTRY_KEYS = frozenset({"name", "url", "api_key_env"})
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One configured server: ``url`` is its chat-completions URL, ``source`` where it was configured."""

    name: str
    url: str
    api_key_env: str = ""
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one request goes, with the key to send (hidden from ``repr`` so it never reaches a log line)."""

    url: str
    api_key: str = dataclasses.field(default="", repr=False)


# ---------------------------------------------------------------------------------------------------------------
# Parsing the configuration
# ---------------------------------------------------------------------------------------------------------------


def endpoint_url(url: object, where: str) -> str:
    """``url`` as a chat-completions URL with a host and no credentials; ``where`` names the entry for errors."""
    if not isinstance(url, str):
        raise FireRedNodeError(f"{where}: the url must be text, got {url!r}")
    try:
        full = chat_url(url)
        parts = urlsplit(full)
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError:
        raise FireRedNodeError(f"{where}: {url!r} is not an http:// or https:// URL") from None
    if not parts.hostname or "@" in parts.netloc:
        raise FireRedNodeError(f"{where}: {url!r} must name a host and carry no user:password@ (keys go in "
                               "api_key_env)")
    return full


def parse_env(text: str, variable: str = ENDPOINTS_ENV) -> list[Endpoint]:
    """The entries of ``variable``'s value ``text``: comma-separated ``name=url`` or plain URLs (named by URL)."""
    endpoints = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, url = entry.partition("=")
        if not sep or "://" in name:
            name, url = entry, entry
        where = f"environment variable {variable}, entry {entry!r}"
        if not NAME.match(name) and name != url:
            raise FireRedNodeError(f"{where}: the name must be letters, digits, '_', '.' or '-' (name=url)")
        endpoints.append(Endpoint(name, endpoint_url(url, where), source=f"${variable}"))
    return endpoints


def parse_file(path: Path) -> list[Endpoint]:
    """The entries of the JSON file ``path``: ``{"endpoints": [{"name", "url", "api_key_env"?}, ...]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FireRedNodeError(f"VLM endpoint file {path}: cannot be read as JSON ({exc})") from None
    entries = data.get("endpoints") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise FireRedNodeError(f"VLM endpoint file {path}: expected {{\"endpoints\": [{{\"name\": ..., \"url\": ..., "
                               f"\"api_key_env\": ...}}]}}")
    return [_file_entry(entry, f"VLM endpoint file {path}, entry {i + 1}", str(path))
            for i, entry in enumerate(entries)]


def _file_entry(entry: object, where: str, source: str) -> Endpoint:
    if not isinstance(entry, dict) or not {"name", "url"} <= entry.keys() or entry.keys() - ENTRY_KEYS:
        raise FireRedNodeError(f"{where}: expected an object with keys name, url and optionally api_key_env, got "
                               f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
    name, key_env = entry["name"], entry.get("api_key_env", "")
    if not isinstance(name, str) or not NAME.match(name):
        raise FireRedNodeError(f"{where}: name must be letters, digits, '_', '.' or '-', got {name!r}")
    if not isinstance(key_env, str) or (key_env and not ENV_NAME.match(key_env)):
        raise FireRedNodeError(f"{where} ({name}): api_key_env must be the name of an environment variable (the "
                               f"key itself never goes in this file), got {key_env!r}")
    return Endpoint(name, endpoint_url(entry["url"], f"{where} ({name})"), key_env, source)


# ---------------------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EndpointPolicy:
    """The configured endpoints and whether loopback servers are allowed without configuration."""

    endpoints: tuple[Endpoint, ...] = ()
    allow_loopback: bool = True
    config_file: Path | None = None  # where the owner would add an entry (named in refusals)

    def __post_init__(self) -> None:
        seen: dict[str, Endpoint] = {}
        for endpoint in self.endpoints:
            if endpoint.name in seen:
                raise FireRedNodeError(f"VLM endpoint name {endpoint.name!r} is configured twice "
                                       f"({seen[endpoint.name].source} and {endpoint.source})")
            seen[endpoint.name] = endpoint

    def resolve(self, value: str) -> Target:
        """Where the widget value ``value`` (a configured name, or a URL) sends pictures, or a refusal."""
        value = value.strip()
        if "://" not in value:
            found = [e for e in self.endpoints if e.name == value]
            if not found:
                raise FireRedNodeError(f"vlm_endpoint: {value!r} is not a configured VLM endpoint name "
                                       f"({self._names()}). {self.how_to()}")
            return self._target(found[0])
        url = endpoint_url(value, "vlm_endpoint")
        for endpoint in self.endpoints:
            if _same_url(endpoint.url, url):
                return self._target(endpoint)
        if self.allow_loopback and is_loopback(url):
            return Target(url)
        raise FireRedNodeError(f"vlm_endpoint: {value!r} is not an allowed VLM endpoint; pictures are sent only to "
                               f"{'loopback servers and ' if self.allow_loopback else ''}endpoints configured on "
                               f"this server ({self._names()}). {self.how_to()}")

    def how_to(self) -> str:
        where = str(self.config_file) if self.config_file else f"the file named by ${CONFIG_ENV}"
        return (f"To allow one, add it to the environment variable {ENDPOINTS_ENV} (comma-separated name=url "
                f"entries) or to {where} ({{\"endpoints\": [{{\"name\": ..., \"url\": ..., \"api_key_env\": ...}}]}}), "
                "then use its name in the workflow.")

    def _names(self) -> str:
        return "configured: " + ", ".join(e.name for e in self.endpoints) if self.endpoints else "none configured"

    @staticmethod
    def _target(endpoint: Endpoint) -> Target:
        if not endpoint.api_key_env:
            return Target(endpoint.url)
        key = os.environ.get(endpoint.api_key_env, "")
        if not key:
            raise FireRedNodeError(f"VLM endpoint {endpoint.name!r} ({endpoint.source}) takes its API key from the "
                                   f"environment variable {endpoint.api_key_env}, which is not set on this server")
        return Target(endpoint.url, key)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback interface (by address or the name ``localhost``)."""
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_url(a: str, b: str) -> bool:
    return _url_key(a) == _url_key(b)


def _url_key(url: str) -> tuple[str, str, int, str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port, parts.path, parts.query


def load_policy() -> EndpointPolicy:
    """The policy as configured now: ``$FIRERED_VLM_ENDPOINTS``, the endpoint file, ``$FIRERED_VLM_ALLOW_LOOPBACK``."""
    endpoints = parse_env(os.environ.get(ENDPOINTS_ENV, ""))
    config = os.environ.get(CONFIG_ENV, "")
    path = Path(config) if config else comfy_bridge.user_config_file(CONFIG_FILE)
    if path is not None and (config or path.exists()):
        endpoints += parse_file(path)
    loopback = os.environ.get(LOOPBACK_ENV, "1").strip().lower()
    if loopback not in ("0", "1", "false", "true", "no", "yes"):
        raise FireRedNodeError(f"environment variable {LOOPBACK_ENV} must be 1 or 0 (true/false, yes/no), got "
                               f"{loopback!r}")
    return EndpointPolicy(tuple(endpoints), loopback in ("1", "true", "yes"), path)
