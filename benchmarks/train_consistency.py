"""What the consistency (identity) loss costs: ``tiny_sft`` against ``tiny_sft_consistency`` on the same face data.

Run (about a minute per run on a 2-core CPU; FOLDER receives the data, the feature network and the runs):

    python benchmarks/train_consistency.py FOLDER            # 64 drawn-face edits, 40 steps each, one run
    python benchmarks/train_consistency.py FOLDER --runs 3   # three runs of each

It writes 64 one-source edits of a drawn face (96 px, fitted to 64 px buckets; every fourth without a face) with
their five landmarks in a JSONL manifest and a seeded tiny face-feature network (16 px crops) into FOLDER, then
runs each stage config as shipped (40 steps, validation samples and export included) as its own ``firered train``
process under ``/usr/bin/time -v`` (the two configs alternating), and prints per run the whole command's wall time, the training steps' time (the
trainer's own "trained N steps in S s" line) and the peak resident memory, then the ratios consistency / plain of
the medians. The printed commands are the ones to repeat by hand.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages and test fixtures, in any venv
from tests.train_fixtures import make_face_pairs, save_tiny_face_features  # noqa: E402

CONFIGS = ("tiny_sft", "tiny_sft_consistency")


def _command(config: str, manifest: Path, features: Path, out: Path) -> list[str]:
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "firered_core", "-v", "train", config,
               "--data.reader=jsonl", f"--data.path={manifest}", f"--output_dir={out}"]
    if config == "tiny_sft_consistency":
        command.append(f"--consistency.features_path={features}")
    return command


def _measure(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, training-step seconds, peak RSS MiB) of one run."""
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    text = done.stderr
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    steps = re.search(r"trained \d+ steps in ([\d.]+) s", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if clock is None or steps is None or rss is None:
        raise RuntimeError(f"could not read the timings of {' '.join(command)}:\n{text[-2000:]}")
    hours, minutes, seconds = clock.groups()
    wall = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    return wall, float(steps.group(1)), int(rss.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the data, the feature network and the runs go")
    parser.add_argument("--runs", type=int, default=1, help="runs of each config (default 1)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    manifest = make_face_pairs(args.folder / "data", 64)
    features = save_tiny_face_features(args.folder / "face_features.safetensors")
    rows: dict[str, list[tuple[float, float, float]]] = {config: [] for config in CONFIGS}
    for run in range(args.runs):
        for config in CONFIGS:  # interleaved, so a change in the machine's load hits both alike
            command = _command(config, manifest, features, args.folder / f"{config}-{run}")
            print(" ".join(command[2:]), flush=True)
            rows[config].append(_measure(command))
            print(f"  {config}: whole command {rows[config][-1][0]:.1f} s, training steps "
                  f"{rows[config][-1][1]:.1f} s, peak RSS {rows[config][-1][2]:.0f} MiB", flush=True)
    medians = {config: [statistics.median(column) for column in zip(*rows[config])] for config in CONFIGS}
    plain, face = medians["tiny_sft"], medians["tiny_sft_consistency"]
    print(f"medians: tiny_sft {plain[0]:.1f} s / {plain[1]:.1f} s / {plain[2]:.0f} MiB, tiny_sft_consistency "
          f"{face[0]:.1f} s / {face[1]:.1f} s / {face[2]:.0f} MiB")
    print(f"consistency / plain: whole command x{face[0] / plain[0]:.2f}, training steps x{face[1] / plain[1]:.2f}, "
          f"peak RSS x{face[2] / plain[2]:.2f}")


if __name__ == "__main__":
    main()
