"""A local tuning job (12 trials, 2 at once) vs the same 12 candidates fitted one after another in one process.

Runs `sagegate run` on a tuned model in a fresh state home, takes the TuneModel step's wall time
and the trials' hyperparameters from the run record, then fits those candidates sequentially in
this process on the run's own train split (scoring each on its validation split, as a trial does)
and prints the ratio (goal <= 0.8x on 2 cores: parallel trials must pay for their process overhead).
`--rows N` uses a synthetic N-row x 20-feature dataset instead of the bundled breast-cancer one.

Usage: python benchmarks/tuning.py [--rows 20000] [--jobs 12] [--parallel 2] [--strategy bayesian]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import memory_line, run_measured
from scale import write_data

from pipelines.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TUNING = """
tuning:
  objective: {metric: auc, goal: maximize}
  strategy: bayesian
  max_jobs: 12
  max_parallel_jobs: 2
  random_seed: 7
  ranges:
    n_estimators: {type: integer, min: 20, max: 120}
    max_depth: {type: integer, min: 4, max: 12}
    max_features: {type: categorical, values: [sqrt, log2]}
"""


def sequential_fits(folder: Path, model_class: str, fixed: dict, trials: list[dict]) -> float:
    """Seconds to fit and score every trial's candidate in this one process."""
    sys.path[:0] = [str(ROOT / "containers" / "train"), str(ROOT / "containers" / "evaluate")]
    import evaluate
    import train

    schema = json.loads((folder / "schema.json").read_text())
    rows, validation = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "validation.csv")
    started = time.perf_counter()
    for trial in trials:
        model = train.build_estimator(model_class, {**fixed, **trial["hyperparameters"]})
        model.fit(rows[schema["features"]], rows[schema["target"]])
        evaluate.scores(model, validation, schema)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0, help="synthetic rows (0: the bundled breast-cancer data)")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--strategy", default="bayesian")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sagegate-tuning-bench-"))
    if args.rows:
        write_data(folder, args.rows)
        config = folder / "model.yaml"
        config.write_text(config.read_text() + TUNING)
    else:
        config = ROOT / "models" / "breast-cancer-tuned.yaml"
    env = {**os.environ, "SAGEGATE_HOME": str(folder / "state")}
    overrides = [f"tuning.max_jobs={args.jobs}", f"tuning.max_parallel_jobs={args.parallel}"]
    overrides.append(f"tuning.strategy={args.strategy}")
    command = [str(BIN / "sagegate"), "run", str(config), "--json", *(x for o in overrides for x in ("--set", o))]
    run_seconds, memory = run_measured(command, env, folder)
    subprocess.run([str(BIN / "sagegate"), "gateway", "stop"], env=env, capture_output=True, check=False)
    listed = subprocess.run([str(BIN / "sagegate"), "runs", "--json"], env=env, capture_output=True, text=True)
    record = json.loads(listed.stdout)[-1]
    if record["status"] != "Succeeded":
        raise SystemExit(f"the tuned run failed: {record['failure_reason']}")
    splits = record["artifacts"]["splits"]
    for part, name in (("train", "train.csv"), ("validation", "validation.csv"), ("schema", "schema.json")):
        subprocess.run([str(BIN / "sagegate"), "s3", "cp", f"{splits}{part}/{name}", str(folder / name)], env=env,
                       check=True, capture_output=True)  # fmt: skip
    loaded = load_config(config, overrides)
    trials = record["tuning"]["trials"]
    step = next(s for s in record["steps"] if s["name"] == "TuneModel")
    bare = sequential_fits(folder, loaded.model.class_, dict(loaded.model.hyperparameters), trials)
    per_trial = sum(t["seconds"] for t in trials) / len(trials)
    data = f"{args.rows} rows" if args.rows else "bundled breast-cancer"
    tuned = step["duration_seconds"]
    print(f"tuning ({args.strategy}, {len(trials)} trials, {args.parallel} at once, {data}): TuneModel {tuned:.1f}s "
          f"vs {len(trials)} sequential fits in one process {bare:.1f}s = {tuned / bare:.2f}x "
          f"(goal <= 0.8x); whole run {run_seconds:.1f}s")  # fmt: skip
    print(f"  per trial: {per_trial:.2f}s as a local training job vs {bare / len(trials):.2f}s per fit")
    print(f"  peak memory per process: {memory_line(memory)}")


if __name__ == "__main__":
    main()
