"""ComfyUI's real web front end in headless Chromium, driven through ``tests/frontend_driver.cjs``.

::

    require_frontend()                                   # skip (or fail under FIRERED_REQUIRE_COMFYUI=1) if absent
    with start_server(tmp_path) as server:               # tests/comfyui_harness.py
        result = run_frontend(server.url, [{"name": "basic", "load": workflow, "screenshot": "basic.png"}])
        result["tasks"][0]["toasts"], ...["dialogs"], ...["overlaps"], ...["prompt"]

``scripts/frontend_env.sh`` installs what this needs: Debian's ``chromium`` and ``playwright-core`` (npm) in
``.cache/frontend``. The driver is a Node script (playwright-core is a Node library); it reads one job as JSON on
stdin and writes one result as JSON on stdout, so every browser session is one short-lived process.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence


from .comfyui_harness import REPO, skip_or_fail

log = logging.getLogger(__name__)

FRONTEND_ROOT = REPO / ".cache" / "frontend"
PLAYWRIGHT = FRONTEND_ROOT / "node_modules" / "playwright-core"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path(__file__).resolve().parent / "frontend_driver.cjs"
VIEWPORT = (1600, 900)
SCHEMA_ALERT = "Invalid workflow against zod schema"
SCREENSHOT_COLOURS = 96


def missing_reason() -> str | None:
    """Why the front-end tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "Node.js is not installed; run: bash scripts/frontend_env.sh"
    for path in (CHROMIUM, PLAYWRIGHT / "package.json", FRONTEND_ROOT / ".stamp"):
        if not path.exists():
            return f"the front-end test tools are not set up ({path} missing); run: bash scripts/frontend_env.sh"
    return None


def require_frontend() -> None:
    """Skip when Chromium/playwright-core are absent; fail instead when ``FIRERED_REQUIRE_COMFYUI`` is set."""
    skip_or_fail(missing_reason())


class FrontendError(AssertionError):
    """The browser session failed as a whole (not a finding about one workflow)."""


def run_frontend(url: str, tasks: Sequence[dict[str, Any]], timeout: float = 600) -> dict[str, Any]:
    """Open ``url`` in headless Chromium and run ``tasks`` (see the driver's header); returns the driver's result."""
    require_frontend()
    job = {"playwright": str(PLAYWRIGHT), "chromium": str(CHROMIUM), "url": url, "viewport": list(VIEWPORT),
           "tasks": [{k: (str(v) if isinstance(v, Path) else v) for k, v in t.items()} for t in tasks]}
    started = time.monotonic()
    proc = subprocess.run(["node", str(DRIVER)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    log.info("front-end session: %d tasks in %.1f s", len(tasks), time.monotonic() - started)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise FrontendError(f"the driver printed no result (exit {proc.returncode})\n--- stdout ---\n"
                            f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}") from None
    if not result.get("ok"):
        raise FrontendError(f"the browser session failed: {result.get('error')}\nconsole: "
                            f"{json.dumps(result.get('console', []))[-4000:]}")
    return result


def problems(task: dict[str, Any]) -> list[str]:
    """What a person would have been warned about when this workflow loaded (empty: it loaded cleanly)."""
    found = [f"toast: {t}" for t in task["toasts"]]
    found += [f"dialog: {d}" for d in task["dialogs"]]
    found += [f"missing node type: {t}" for t in task["missing"]]
    found += [f"nodes {a} and {b} overlap by {w:.0f} x {h:.0f}" for a, b, w, h in task["overlaps"]]
    found += [f"console: {line}" for line in task.get("console", []) if SCHEMA_ALERT in line]
    return found


def shrink_png(path: Path) -> None:
    """Rewrite a screenshot as a palette PNG: the canvas has few colours, so it stays small enough to commit."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=SCREENSHOT_COLOURS, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
