"""How long ComfyUI spends importing this plugin: the median over fresh interpreters.

Each run starts a new Python process and imports the repository's ``__init__.py`` the way ComfyUI's
``load_custom_node`` does (``spec_from_file_location`` under the folder's name), timing only that import. The
interpreter's own start-up is excluded. Wall time depends on how busy the machine is; the CPU time the import
itself used (also printed) does much less. A second line says whether the import pulled in torch, which it must not.

    python benchmarks/plugin_import.py             # 7 runs
    python benchmarks/plugin_import.py --runs 15
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("plugin_import")

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: import the plugin as ComfyUI does and report the time and what got imported.
CHILD = """
import importlib.util, json, sys, time
root = sys.argv[1]
start, cpu_start = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("ComfyUI-FireRed", root + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({"ms": elapsed * 1000, "cpu_ms": cpu * 1000, "nodes": len(module.NODE_CLASS_MAPPINGS),
                  "heavy": sorted(m for m in ("torch", "numpy", "PIL", "transformers") if m in sys.modules)}))
"""


def measure_once() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], check=True, capture_output=True, text=True,
                         env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measure_once()  # warm the file cache; not counted
    runs = [measure_once() for _ in range(args.runs)]
    times = sorted(r["ms"] for r in runs)
    cpu = statistics.median(r["cpu_ms"] for r in runs)
    log.info("plugin import: median %.1f ms wall (min %.1f, max %.1f), %.1f ms CPU, over %d fresh interpreters; "
             "%d nodes registered", statistics.median(times), times[0], times[-1], cpu, len(times), runs[-1]["nodes"])
    heavy = sorted({m for r in runs for m in r["heavy"]})
    log.info("heavy modules imported by the plugin: %s", ", ".join(heavy) if heavy else "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
