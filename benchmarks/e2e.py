"""`sagegate run` on the bundled example vs a bare one-process script doing the same ML work.

Both are timed as whole processes (interpreter start and imports included), alternately,
REPEATS times each in this one run; the ratio of medians is printed. Goal: <= 1.5x.
Usage: python benchmarks/e2e.py [REPEATS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    env = {**os.environ, "SAGEGATE_HOME": tempfile.mkdtemp(prefix="sagegate-bench-")}
    sagegate = [str(BIN / "sagegate"), "run", "models/breast-cancer.yaml"]
    bare = [sys.executable, "benchmarks/bare_pipeline.py", "data/breast_cancer.csv"]
    runs: dict[str, list[float]] = {"sagegate run": [], "bare script": []}
    for _ in range(repeats):
        runs["sagegate run"].append(timed(sagegate, env))
        runs["bare script"].append(timed(bare, env))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"{name:<13} median {medians[name]:6.2f}s  runs {', '.join(f'{t:.2f}' for t in times)}")
    print(f"ratio sagegate/bare: {medians['sagegate run'] / medians['bare script']:.1f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
