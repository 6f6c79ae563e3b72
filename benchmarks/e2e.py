"""`sagegate run` on the bundled example vs a bare one-process script doing the same ML work.

Both are timed as whole processes (interpreter start and imports included), alternately, REPEATS
times each in this one run, every `sagegate run` in a fresh state home; the ratio of medians and
the peak memory of every process are printed. With `--history N`, N more runs go into one home
and its last run is compared with the fresh-home median (start-up must not grow with history).

Usage: python benchmarks/e2e.py [--repeats 3] [--history 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import memory_line, run_measured

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SAGEGATE = [str(BIN / "sagegate"), "run", "models/breast-cancer.yaml"]
BARE = [sys.executable, "benchmarks/bare_pipeline.py", "data/breast_cancer.csv"]


def fresh_env() -> dict[str, str]:
    return {**os.environ, "SAGEGATE_HOME": tempfile.mkdtemp(prefix="sagegate-bench-")}


def stop_gateway(env: dict[str, str]) -> None:
    run_measured([str(BIN / "sagegate"), "gateway", "stop"], env, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--history", type=int, default=0, help="runs into one home before timing its last")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"sagegate run": [], "bare script": []}
    memory: dict[str, dict[str, float]] = {"sagegate run": {}, "bare script": {}}
    for _ in range(args.repeats):
        env = fresh_env()
        for name, command in (("sagegate run", SAGEGATE), ("bare script", BARE)):
            seconds, peaks = run_measured(command, env, ROOT)
            runs[name].append(seconds)
            for process, mb in peaks.items():
                memory[name][process] = max(memory[name].get(process, 0.0), mb)
        stop_gateway(env)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"{name:<13} median {medians[name]:6.2f}s  runs {', '.join(f'{t:.2f}' for t in times)}")
        print(f"{'':<13} peak memory per process: {memory_line(memory[name])}")
    print(f"ratio sagegate/bare: {medians['sagegate run'] / medians['bare script']:.1f}x")
    if args.history:
        env = fresh_env()
        for _ in range(args.history):
            seconds, peaks = run_measured(SAGEGATE, env, ROOT)
        stop_gateway(env)
        fresh = medians["sagegate run"]
        print(
            f"after {args.history} runs in one home: last run {seconds:.2f}s = {seconds / fresh:.2f}x the fresh-home "
            f"median; largest process {max(peaks.values()):.0f} MB vs {max(memory['sagegate run'].values()):.0f} MB"
        )


if __name__ == "__main__":
    main()
