"""Peak-memory measurement shared by the benchmarks (Linux): the kernel's own accounting of one process.

torch's CPU allocations are invisible to tracemalloc and torch keeps no CPU allocator statistics, so a benchmark
runs each side in a fresh child process and reads ``/proc/self/status``: after a warm-up call, the resident
high-water mark is reset (``echo 5 > /proc/self/clear_refs``), the measured call runs, and
``VmHWM - VmRSS(before)`` is the extra memory it needed at its peak. The children run with a fixed
``MALLOC_MMAP_THRESHOLD_`` so every large tensor is its own mapping, returned to the kernel when freed (glibc would
otherwise keep freed memory cached and hide reuse).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable


def status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status, e.g. VmRSS or VmHWM."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def print_peak_extra(call: Callable[[], object]) -> None:
    """Run ``call`` once (already warmed up by the caller) and print its peak extra memory as JSON."""
    before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    call()
    peak = status_kb("VmHWM")
    print(json.dumps({"peak_extra_mb": (peak - before) / 1024, "rss_before_mb": before / 1024}))


def measure_in_child(script: str, which: str, forwarded: list[str], threads: int) -> dict:
    """Run ``script --memory-child which *forwarded`` in a fresh process and return the JSON it printed."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, script, "--memory-child", which, *forwarded]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ratio_text(ours_mb: float, reference_mb: float) -> str:
    """``ours / reference`` to three places, or a note when the reference peak was too small to measure (tiny
    settings: the kernel's accounting works in pages, so a forward can show no extra memory at all)."""
    if reference_mb <= 0:
        return "n/a (the reference's peak is below what the kernel's accounting shows)"
    return f"{ours_mb / reference_mb:.3f}"
