"""`sagegate run` on large data vs the bare one-process script: time and peak memory of every process.

Writes a 200k-row and a 1M-row x 20-feature CSV (scikit-learn's make_classification), trains a
RandomForest (50 trees, depth 10) through `sagegate run` in a fresh state home and with
benchmarks/bare_pipeline.py, and prints: run/bare time (goal <= 1.3x at 200k), the largest
process vs the bare script's peak (goal <= 1.5x), 1M vs 5 x 200k time (goal <= 1.2x linear) and
peak memory vs the CSV's size (goal <= 3x). Also the seconds outside the fit, in the run and in the
bare script: the fit is the same work in both, and on a host whose speed drifts it moves the ratio.

Usage: python benchmarks/scale.py [--rows 200000 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import memory_line, run_measured

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIG = """
name: scale
task: classification
data: {source: data.csv, target: label}
model:
  class: sklearn.ensemble.RandomForestClassifier
  hyperparameters: {n_estimators: 50, max_depth: 10, random_state: 42}
quality_gate: {metrics: {accuracy: {min: 0.5}}}
deployment: {type: serverless}
"""


def write_data(folder: Path, rows: int) -> Path:
    features, target = make_classification(rows, 20, n_informative=12, random_state=0)
    frame = pd.DataFrame(features.astype(np.float32), columns=[f"f{i}" for i in range(20)]).assign(label=target)
    path = folder / "data.csv"
    frame.to_csv(path, index=False)
    (folder / "model.yaml").write_text(CONFIG)
    return path


def step_line(home: Path) -> str:
    """The run's steps as its record has them (each step's wall time in the SDK's executor)."""
    from pipelines.logs import quiet_sdk_logs

    quiet_sdk_logs()
    from pipelines.local_run import list_records  # after the timed runs: it imports the SageMaker SDK
    from pipelines.state import StateHome

    record = list_records(StateHome(home))[0][-1]
    steps = ", ".join(f"{step.name} {step.duration_seconds or 0:.1f}s" for step in record.steps)
    return f"{steps}; pipeline {record.duration_seconds:.1f}s"


def run_fit_seconds(home: Path) -> float:
    """The fit's seconds as the run's train job logged them (`train: fitted ... in 15.31 s`)."""
    logs = sorted((home / "runs" / "logs").glob("*/TrainModel-*.log"))
    found = re.search(r"train: fitted .* in ([0-9.]+) s$", logs[-1].read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no fit time in {logs[-1]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    for rows in args.rows:
        folder = Path(tempfile.mkdtemp(prefix=f"sagegate-scale-{rows}-"))
        csv = write_data(folder, rows)
        os.sync()  # the new CSV on disk first: its write-back would otherwise land on the timed runs
        env = {**os.environ, "SAGEGATE_HOME": str(folder / "state")}
        run_pss: dict[str, float] = {}
        run_seconds, run_memory = run_measured([str(BIN / "sagegate"), "run", "model.yaml"], env, folder, run_pss)
        run_measured([str(BIN / "sagegate"), "gateway", "stop"], env, folder)
        script = str(ROOT / "benchmarks" / "bare_pipeline.py")
        bare_fit = folder / "bare-fit-seconds"
        bare = [sys.executable, script, str(csv), "--trees", "50", "--depth", "10", "--fit-seconds-to", str(bare_fit)]
        bare_seconds, bare_memory = run_measured(bare, env, folder)
        fits = run_fit_seconds(Path(env["SAGEGATE_HOME"])), float(bare_fit.read_text())
        csv_mb = csv.stat().st_size / 2**20
        largest, bare_peak = max(run_memory.values()), max(bare_memory.values())
        results[rows] = {"run": run_seconds, "bare": bare_seconds, "largest": largest}
        print(f"{rows} rows ({csv_mb:.0f} MB CSV): run {run_seconds:.1f}s vs bare {bare_seconds:.1f}s = "
              f"{run_seconds / bare_seconds:.2f}x; largest process {largest:.0f} MB = {largest / bare_peak:.2f}x the "
              f"bare script's {bare_peak:.0f} MB, {largest / csv_mb:.2f}x the CSV")  # fmt: skip
        print(f"  steps: {step_line(Path(env['SAGEGATE_HOME']))}")
        # the fit is the same work in both and swings with the host's speed; what the run adds is outside it
        print(f"  outside the fit: run {run_seconds - fits[0]:.1f}s vs bare {bare_seconds - fits[1]:.1f}s "
              f"(fit: run {fits[0]:.1f}s, bare {fits[1]:.1f}s)")  # fmt: skip
        print(f"  peak memory per process: {memory_line(run_memory)}")
        print(f"  peak proportional set size (shared pages split between their processes): {memory_line(run_pss)}; "
              f"largest {max(run_pss.values()) / csv_mb:.2f}x the CSV")  # fmt: skip
    if 200_000 in results and 1_000_000 in results:
        linear = results[1_000_000]["run"] / (5 * results[200_000]["run"])
        print(f"1M rows vs 5 x 200k rows: {linear:.2f}x linear")


if __name__ == "__main__":
    main()
