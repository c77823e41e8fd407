"""The real ComfyUI that ``scripts/comfyui_env.sh`` sets up, for integration tests.

::

    require_comfyui()                                    # skip (or fail under FIRERED_REQUIRE_COMFYUI=1) if absent
    result = run_in_comfyui("emit({'n': len(INPUTS['keys'])})", {"keys": [1, 2]})   # -> {"n": 2}
    with start_server(tmp_path) as server:               # main.py --cpu on 127.0.0.1, plugin linked in
        info = server.get_json("/object_info")
        prompt_id = server.queue({...API-format graph...})
        entry = server.wait_for(prompt_id)

ComfyUI lives in ``.cache/comfyui/ComfyUI`` with its own venv (torch 2.14.1 + torchvision), separate from the
project's venv, so everything that imports ``comfy`` runs in a subprocess. A snippet runs with ComfyUI's folder
first on ``sys.path``, ComfyUI's command line parsed as if ``main.py --cpu`` had started it, ``INPUTS`` (the
JSON-able dict passed in) and ``emit(obj)``, which hands one JSON-able result back.

Every such process imports ``tests/netguard/sitecustomize.py`` first: a connection or name lookup beyond the
loopback interface is refused and logged (``network_attempts`` finds the lines).

The server gets a fresh ``--base-directory`` (models, custom_nodes, input, output, temp, user), whose
``custom_nodes/ComfyUI-FireRed`` is a symlink to this checkout, a free port on 127.0.0.1, and a log file; it is
stopped by its PID (SIGTERM, then SIGKILL).

Without the set-up the tests skip with the reason, unless ``FIRERED_REQUIRE_COMFYUI`` is set (CI sets it), in
which case they fail: a missing ComfyUI must not pass silently there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
COMFY_ROOT = REPO / ".cache" / "comfyui"
COMFY_DIR = COMFY_ROOT / "ComfyUI"
COMFY_PYTHON = COMFY_ROOT / "venv" / "bin" / "python"
REQUIRE_ENV = "FIRERED_REQUIRE_COMFYUI"
START_TIMEOUT_ENV = "FIRERED_COMFYUI_START_TIMEOUT"
PLUGIN_LINK_NAME = "ComfyUI-FireRed"
# model folders the tests put files into (ComfyUI creates none of them under --base-directory by itself)
MODEL_FOLDERS = ("diffusion_models", "loras", "text_encoders", "vae")


# ---------------------------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------------------------


def missing_reason() -> str | None:
    """Why ComfyUI cannot be used here, or None when it is set up."""
    for path in (COMFY_PYTHON, COMFY_DIR / "main.py", COMFY_ROOT / ".stamp"):
        if not path.exists():
            return f"ComfyUI is not set up ({path.relative_to(REPO)} missing); run: bash scripts/comfyui_env.sh"
    return None


def skip_or_fail(reason: str | None) -> None:
    """Skip the calling test for ``reason`` (nothing when None); fail instead when ``FIRERED_REQUIRE_COMFYUI`` is
    set, so missing test tools never pass silently in CI."""
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is an error, not a skip)")
    pytest.skip(reason)


def require_comfyui() -> None:
    """Skip the calling test when ComfyUI is not set up; fail instead when ``FIRERED_REQUIRE_COMFYUI`` is set."""
    skip_or_fail(missing_reason())


NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"
NETGUARD_MARKER = "FIRERED-NETGUARD blocked"  # tests/netguard/sitecustomize.py's MARKER


def _env() -> dict[str, str]:
    """ComfyUI's environment: offline flags, the network guard (tests/netguard) imported at start-up, this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # this checkout's firered_core comes before the one ComfyUI's venv has installed (a worktree tests its own code)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(NETGUARD_DIR), str(REPO)]))
    return env


def network_attempts(text: str) -> list[str]:
    """The guard's lines in a log: every network access a ComfyUI process tried (and was refused)."""
    return [line for line in text.splitlines() if line.startswith(NETGUARD_MARKER)]


# ---------------------------------------------------------------------------------------------------------------
# Snippets in ComfyUI's venv
# ---------------------------------------------------------------------------------------------------------------

# Runs before every snippet: what main.py does to parse its command line, plus the INPUTS/emit channel.
_PRELUDE = """\
import json, sys
sys.path.insert(0, {comfy_dir!r})
sys.argv = ["main.py", *{comfy_args!r}]
import comfy.options
comfy.options.enable_args_parsing()
with open({inputs_path!r}, encoding="utf-8") as _f:
    INPUTS = json.load(_f)

def emit(obj):
    with open({result_path!r}, "w", encoding="utf-8") as _f:
        json.dump(obj, _f)

"""


class ComfySnippetError(AssertionError):
    """A snippet failed inside ComfyUI's venv; the message carries its output."""


def run_in_comfyui(code: str, inputs: Mapping[str, Any] | None = None, *, comfy_args: Sequence[str] = ("--cpu",),
                   timeout: float = 600) -> Any:
    """Run ``code`` in ComfyUI's venv and return what it ``emit``-ted (None if nothing); raise on failure."""
    require_comfyui()
    with tempfile.TemporaryDirectory(prefix="firered-comfy-") as tmp:
        inputs_path, result_path, script = (Path(tmp) / n for n in ("inputs.json", "result.json", "snippet.py"))
        inputs_path.write_text(json.dumps(dict(inputs or {})), encoding="utf-8")
        script.write_text(_PRELUDE.format(comfy_dir=str(COMFY_DIR), comfy_args=list(comfy_args),
                                          inputs_path=str(inputs_path), result_path=str(result_path))
                          + textwrap.dedent(code), encoding="utf-8")
        started = time.monotonic()
        proc = subprocess.run([str(COMFY_PYTHON), str(script)], cwd=COMFY_DIR, env=_env(), capture_output=True,
                              text=True, timeout=timeout)
        log.info("ComfyUI snippet finished in %.1f s with code %d", time.monotonic() - started, proc.returncode)
        if proc.returncode != 0:
            raise ComfySnippetError(f"snippet failed with exit code {proc.returncode}\n--- stdout ---\n"
                                    f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
        return json.loads(result_path.read_text(encoding="utf-8")) if result_path.exists() else None


# ---------------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_base_dir(base: Path, plugin: Path = REPO) -> Path:
    """A ComfyUI base directory with the model folders and ``custom_nodes/ComfyUI-FireRed`` -> ``plugin``."""
    for folder in MODEL_FOLDERS:
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("custom_nodes", "input", "output", "temp", "user"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PLUGIN_LINK_NAME
    if not link.exists():
        link.symlink_to(plugin.resolve(), target_is_directory=True)
    return base


class ComfyServer:
    """A running ``main.py``: its URL, log and a few HTTP helpers. Use it as a context manager."""

    def __init__(self, process: subprocess.Popen, port: int, base_dir: Path, log_path: Path) -> None:
        self.process, self.port, self.base_dir, self.log_path = process, port, base_dir, log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """Everything the server has printed so far (stdout and stderr)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def request(self, path: str, data: Any = None, timeout: float = 30) -> Any:
        """GET ``path`` (or POST ``data`` as JSON) and decode the JSON answer (None for an empty one)."""
        body = None if data is None else json.dumps(data).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read().decode("utf-8")
                return json.loads(text) if text.strip() else None  # e.g. POST /interrupt answers with no body
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{'POST' if body else 'GET'} {path}: HTTP {e.code}: "
                                 f"{e.read().decode('utf-8', 'replace')[:4000]}") from None

    def get_json(self, path: str) -> Any:
        return self.request(path)

    def queue(self, graph: Mapping[str, Any], client_id: str = "firered-tests") -> str:
        """POST an API-format graph to /prompt; returns its prompt id (node errors raise)."""
        answer = self.request("/prompt", {"prompt": dict(graph), "client_id": client_id})
        if answer.get("node_errors"):
            raise AssertionError(f"/prompt refused the graph: {json.dumps(answer['node_errors'])[:4000]}")
        return str(answer["prompt_id"])

    def wait_for(self, prompt_id: str, timeout: float = 600) -> dict[str, Any]:
        """The /history entry of ``prompt_id`` once it has finished (raises on timeout or a dead server)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {self.process.returncode}\n{self.log[-8000:]}")
            try:
                entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            except TimeoutError:  # a loaded machine: the server was too busy to answer this poll, not dead
                continue
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s\n{self.log[-8000:]}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the server by its PID, SIGKILL it if it does not exit in ``timeout`` s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI (pid %d) ignored SIGTERM; killing it", self.process.pid)
                self.process.kill()
                self.process.wait(timeout)
        log.info("ComfyUI (pid %d) stopped with code %s", self.process.pid, self.process.returncode)

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_ready(server: ComfyServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"ComfyUI exited with {server.process.returncode} while starting\n"
                                 f"{server.log[-8000:]}")
        try:
            with urllib.request.urlopen(server.url + "/system_stats", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop()
    raise AssertionError(f"ComfyUI did not answer on {server.url} within {timeout:.0f} s\n{server.log[-8000:]}")


def start_server(base_dir: Path, *, plugin: Path = REPO, extra_args: Sequence[str] = (),
                 timeout: float | None = None) -> ComfyServer:
    """Start ``main.py --cpu`` on a free port of 127.0.0.1 with ``base_dir`` as its base directory; wait until ready.

    ``timeout`` defaults to ``FIRERED_COMFYUI_START_TIMEOUT`` seconds, else 180 (it starts in ~8 s on an idle
    2-core machine; raise it on a machine busy with other jobs).
    """
    if timeout is None:
        timeout = float(os.environ.get(START_TIMEOUT_ENV, "180"))
    require_comfyui()
    make_base_dir(base_dir, plugin)
    port = free_port()
    log_path = base_dir / "comfyui.log"
    cmd = [str(COMFY_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base_dir), "--database-url", f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
           *extra_args]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(cmd, cwd=COMFY_DIR, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = ComfyServer(process, port, base_dir, log_path)
    started = time.monotonic()
    _wait_ready(server, timeout)
    log.info("ComfyUI (pid %d) ready on %s in %.1f s", process.pid, server.url, time.monotonic() - started)
    return server


if __name__ == "__main__":  # a quick manual check: python tests/comfyui_harness.py
    logging.basicConfig(level=logging.INFO)
    log.info("%s", run_in_comfyui("import comfy.model_management as mm, torch\n"
                                  "emit({'device': str(mm.get_torch_device()), 'torch': torch.__version__})"))
