"""Where the Multi-Image node may send pictures: the server's configured endpoints and loopback, never a URL a
shared workflow brings along. A local HTTP server stands in for both the allowed VLM and the foreign collector."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Iterator

import pytest
import torch
from PIL import Image

from nodes.common import FireRedNodeError, pils_to_tensor
from nodes.multi_image import FireRedMultiImage
from nodes.vlm_endpoints import (CONFIG_ENV, ENDPOINTS_ENV, LOOPBACK_ENV, Endpoint, EndpointPolicy, Target,
                                 load_policy, parse_env, parse_file)
from tests.chat_server import ChatServer, chat_answer
from tests.node_fixtures import tiny_model

SETTINGS = dict(negative_prompt=" ", steps=2, true_cfg_scale=4.0, seed=0, width=32, height=32, max_composites=3)
SECRET = "sk-test-never-in-a-message"


@pytest.fixture(autouse=True)
def _no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENDPOINTS_ENV, CONFIG_ENV, LOOPBACK_ENV, "VLM_KEY"):
        monkeypatch.delenv(name, raising=False)


def _config(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "vlm_endpoints.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


def test_env_entries_are_named_or_plain_urls() -> None:
    endpoints = parse_env(" qwen=http://gpu-box:8000/v1 , https://api.example.com/v1/chat/completions,")
    assert endpoints == [
        Endpoint("qwen", "http://gpu-box:8000/v1/chat/completions", source=f"${ENDPOINTS_ENV}"),
        Endpoint("https://api.example.com/v1/chat/completions", "https://api.example.com/v1/chat/completions",
                 source=f"${ENDPOINTS_ENV}"),
    ]


@pytest.mark.parametrize("text, entry", [
    ("qwen=ftp://host/v1", "'qwen=ftp://host/v1'"),
    ("just-a-name", "'just-a-name'"),
    ("bad name=http://h/v1", "'bad name=http://h/v1'"),
    ("a=http://user:pw@h/v1", "'a=http://user:pw@h/v1'"),
])
def test_malformed_env_entries_are_refused_naming_the_entry(text: str, entry: str) -> None:
    with pytest.raises(FireRedNodeError, match=f"environment variable {ENDPOINTS_ENV}, entry {entry}"):
        parse_env(text)


def test_file_entries(tmp_path: Path) -> None:
    path = _config(tmp_path, {"endpoints": [{"name": "cloud", "url": "https://api.example.com/v1",
                                             "api_key_env": "VLM_KEY"}]})
    assert parse_file(path) == [Endpoint("cloud", "https://api.example.com/v1/chat/completions", "VLM_KEY",
                                         str(path))]


@pytest.mark.parametrize("entries, message", [
    ({"endpoints": [{"name": "ok", "url": "http://h/v1"}, {"name": "x"}]}, "entry 2: expected an object"),
    ({"endpoints": [{"name": "a", "url": "http://h/v1", "api_key": SECRET}]}, "entry 1: expected an object"),
    ({"endpoints": [{"name": "a", "url": "http://h/v1", "api_key_env": SECRET}]}, r"entry 1 \(a\): api_key_env"),
    ({"endpoints": [{"name": "a b", "url": "http://h/v1"}]}, "entry 1: name must be"),
    ({"endpoints": [{"name": "a", "url": "gopher://h"}]}, r"entry 1 \(a\): 'gopher://h' is not an http"),
    ([{"name": "a", "url": "http://h/v1"}], "expected {\"endpoints\""),
])
def test_malformed_files_are_refused_naming_the_entry(tmp_path: Path, entries: object, message: str) -> None:
    path = _config(tmp_path, entries)
    with pytest.raises(FireRedNodeError, match=f"VLM endpoint file {path}.*{message}") as error:
        parse_file(path)
    if "api_key_env" in message:
        assert SECRET in str(error.value)  # the value was put where a variable name goes: it is shown to fix it
    else:
        assert SECRET not in str(error.value)


def test_a_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vlm_endpoints.json"
    path.write_text("{endpoints: ", encoding="utf-8")
    with pytest.raises(FireRedNodeError, match="cannot be read as JSON"):
        parse_file(path)


def test_a_name_configured_twice_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINTS_ENV, "qwen=http://a:1/v1")
    monkeypatch.setenv(CONFIG_ENV, str(_config(tmp_path, {"endpoints": [{"name": "qwen", "url": "http://b/v1"}]})))
    with pytest.raises(FireRedNodeError, match=f"'qwen' is configured twice \\(\\${ENDPOINTS_ENV} and "):
        load_policy()


# ---------------------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:1234/v1", "http://[::1]:80/v1",
                                 "http://127.0.0.2:8000/v1/chat/completions"])
def test_loopback_is_allowed_without_configuration(url: str) -> None:
    assert load_policy().resolve(url).url.startswith(url.removesuffix("/chat/completions"))


@pytest.mark.parametrize("url", ["http://collector.example.com/v1", "http://localhost.collector.example.com/v1",
                                 "http://10.0.0.5:8000/v1", "http://[::ffff:7f00:1]:80/v1"])
def test_unconfigured_hosts_are_refused_with_how_to_allow(url: str) -> None:
    with pytest.raises(FireRedNodeError, match=f"not an allowed VLM endpoint.*none configured.*{ENDPOINTS_ENV}"):
        load_policy().resolve(url)


def test_a_loopback_disguise_is_refused() -> None:
    with pytest.raises(FireRedNodeError, match="carry no user:password@"):
        load_policy().resolve("http://127.0.0.1@collector.example.com/v1")  # the host is collector.example.com


def test_configured_names_and_urls_resolve_with_their_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINTS_ENV, "gpu=http://gpu-box:8000/v1")
    monkeypatch.setenv(CONFIG_ENV, str(_config(tmp_path, {"endpoints": [
        {"name": "cloud", "url": "https://api.example.com/v1", "api_key_env": "VLM_KEY"}]})))
    monkeypatch.setenv("VLM_KEY", SECRET)
    policy = load_policy()
    assert policy.resolve("gpu") == Target("http://gpu-box:8000/v1/chat/completions")
    assert policy.resolve(" cloud ") == Target("https://api.example.com/v1/chat/completions", SECRET)
    assert policy.resolve("https://API.example.com:443/v1/") == Target("https://api.example.com/v1/chat/completions",
                                                                       SECRET)
    assert SECRET not in repr(policy.resolve("cloud"))
    with pytest.raises(FireRedNodeError, match=r"not an allowed VLM endpoint.*configured: gpu, cloud"):
        policy.resolve("https://api.example.com/v2")  # same host, another path: not what was configured
    with pytest.raises(FireRedNodeError, match=r"'qwen' is not a configured VLM endpoint name \(configured: gpu"):
        policy.resolve("qwen")


def test_a_missing_key_variable_is_named_not_guessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(_config(tmp_path, {"endpoints": [
        {"name": "cloud", "url": "https://api.example.com/v1", "api_key_env": "VLM_KEY"}]})))
    with pytest.raises(FireRedNodeError, match="environment variable VLM_KEY, which is not set"):
        load_policy().resolve("cloud")


def test_loopback_default_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOPBACK_ENV, "0")
    with pytest.raises(FireRedNodeError, match="sent only to endpoints configured on this server"):
        load_policy().resolve("http://127.0.0.1:8000/v1")
    monkeypatch.setenv(LOOPBACK_ENV, "maybe")
    with pytest.raises(FireRedNodeError, match=f"{LOOPBACK_ENV} must be 1 or 0"):
        load_policy()


def test_the_refusal_names_the_file_to_edit() -> None:
    policy = EndpointPolicy(config_file=Path("/srv/comfy/user/firered/vlm_endpoints.json"))
    with pytest.raises(FireRedNodeError, match="/srv/comfy/user/firered/vlm_endpoints.json"):
        policy.resolve("http://collector.example.com/v1")


# ---------------------------------------------------------------------------------------------------------------
# The node, against a local server playing the configured VLM or the foreign collector
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(reply=chat_answer(json.dumps({"boxes": [None] * 5}))) as chat:
        yield chat


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _pictures(n: int) -> torch.Tensor:
    return pils_to_tensor([Image.new("RGB", (64, 48), (40 * i, 90, 200)) for i in range(n)])


def _hostname_alias() -> str:
    """A name other than 'localhost' that resolves to 127.0.0.1 here (the machine's own name), else skip."""
    name = socket.gethostname()
    try:
        resolved = socket.gethostbyname(name)
    except OSError:
        resolved = ""
    if resolved != "127.0.0.1" or name.lower() == "localhost":
        pytest.skip("this machine's name does not resolve to 127.0.0.1")
    return name


@pytest.mark.parametrize("how", ["loopback default off", "host name alias"])
def test_a_workflow_cannot_send_pictures_to_an_unallowed_server(model, server: ChatServer, how: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "loopback default off":
        monkeypatch.setenv(LOOPBACK_ENV, "0")
        url = f"http://127.0.0.1:{server.port}/v1"
    else:
        url = f"http://{_hostname_alias()}:{server.port}/v1"
    with pytest.raises(FireRedNodeError, match=f"not an allowed VLM endpoint.*{ENDPOINTS_ENV}"):
        FireRedMultiImage().edit(model, "Picture 4 on Picture 1", image1=_pictures(5), vlm_endpoint=url, **SETTINGS)
    assert server.requests == []  # refused before anything was sent


def test_refused_even_when_no_picture_would_be_sent(model, server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOPBACK_ENV, "0")
    with pytest.raises(FireRedNodeError, match="not an allowed VLM endpoint"):
        FireRedMultiImage().edit(model, "Picture 1", image1=_pictures(2), vlm_endpoint=f"http://127.0.0.1:{server.port}/v1",
                                 **SETTINGS)


def test_a_configured_endpoint_gets_the_key_from_the_server(model, server: ChatServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOOPBACK_ENV, "0")
    monkeypatch.setenv(CONFIG_ENV, str(_config(tmp_path, {"endpoints": [
        {"name": "house-vlm", "url": f"http://127.0.0.1:{server.port}/v1", "api_key_env": "VLM_KEY"}]})))
    monkeypatch.setenv("VLM_KEY", SECRET)
    FireRedMultiImage().edit(model, "Picture 4 on Picture 1", image1=_pictures(5), vlm_endpoint="house-vlm",
                             vlm_model="tiny-vlm", **SETTINGS)
    (path, headers, body), = server.requests
    assert path == "/v1/chat/completions" and body["model"] == "tiny-vlm"
    assert headers["Authorization"] == f"Bearer {SECRET}"
