"""Monitoring benchmark: the drift job over 1M captured rows, and what capture costs a request.

1. The monitoring job (containers/monitor/monitor.py, as `sagegate monitor run` starts it) over N
   captured one-row requests in SageMaker's capture format, against a bare script that only reads
   the same files with pandas (`read_json(lines=True)`), both as whole processes; with the peak
   memory of each and the size of the captures.
2. The user's path with capture on and off: boto3 `invoke_endpoint` through the gateway at 16
   clients to two realtime endpoints of the same model, one capturing every request, measured in
   alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_friedman1

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import run_measured  # noqa: E402

from pipelines.containers import container_code  # noqa: E402
from pipelines.local.capture import capture_line  # noqa: E402

FEATURES = [f"x{i}" for i in range(8)]
WHEN = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
LINES_PER_FILE = 10_000
PANDAS_READ = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import pandas as pd
    rows = 0
    for path in sorted(Path(sys.argv[1]).rglob("*.jsonl")):
        rows += len(pd.read_json(path, lines=True))
    print(rows)
    """
)


def write_captures(folder: Path, rows: int) -> tuple[Path, int]:
    """`rows` one-row CSV requests, as the gateway captures them (files of 10k lines, one hour folder)."""
    x, _ = make_friedman1(n_samples=rows, n_features=8, random_state=3)
    texts = [",".join(values) for values in np.char.mod("%.6f", x).tolist()]
    hour = folder / "capture" / "AllTraffic" / WHEN.strftime("%Y/%m/%d/%H")
    hour.mkdir(parents=True)
    size = 0
    for start in range(0, rows, LINES_PER_FILE):
        when = WHEN + timedelta(seconds=start // 1000)
        lines = [capture_line(t.encode(), "text/csv", b'{"predictions": [1.0]}', "application/json", when)
                 for t in texts[start : start + LINES_PER_FILE]]  # fmt: skip
        path = hour / f"{start // LINES_PER_FILE:05d}.jsonl"
        path.write_text("".join(lines))
        size += path.stat().st_size
    return folder / "capture", size


def write_baseline(folder: Path) -> Path:
    sys.path.insert(0, str(container_code("preprocess")))
    from preprocess import baseline

    x, _ = make_friedman1(n_samples=700, n_features=8, random_state=1)
    statistics, constraints = baseline(pd.DataFrame(x, columns=FEATURES), FEATURES)
    (folder / "statistics.json").write_text(json.dumps(statistics))
    (folder / "constraints.json").write_text(json.dumps(constraints))
    return folder


def monitor_job(workdir: Path, rows: int) -> None:
    captures, size = write_captures(workdir, rows)
    baseline = write_baseline(workdir)
    (workdir / "read.py").write_text(PANDAS_READ)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pandas_s, pandas_peaks = run_measured([sys.executable, str(workdir / "read.py"), str(captures)], env, workdir)
    job_env = {
        **env,
        "dataset_source": str(captures),
        "output_path": str(workdir / "out"),
        "start_time": "2026-11-30T08:00:00Z",
        "end_time": "2026-11-30T10:00:00Z",
        "sagemaker_endpoint_name": "bench",
        "baseline_statistics": str(baseline / "statistics.json"),
        "baseline_constraints": str(baseline / "constraints.json"),
        "SAGEGATE_MONITOR_LIB": str(container_code("preprocess")),
    }
    job = [sys.executable, str(container_code("monitor", "monitor.py"))]
    job_s, job_peaks = run_measured(job, job_env, workdir)
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    if summary["rows"] != rows:
        raise SystemExit(f"the job read {summary['rows']} rows, not {rows}")
    print(f"monitoring job over {rows:,} captured rows ({size / 2**20:.0f} MB of capture files):")
    print(f"  pandas read_json(lines=True) of the captures: {pandas_s:.2f} s, peak {max(pandas_peaks.values()):.0f} MB")
    print(f"  monitoring job (parse, statistics, checks, report): {job_s:.2f} s, peak {max(job_peaks.values()):.0f} MB")
    job_peak, pandas_peak = max(job_peaks.values()), max(pandas_peaks.values())
    print(f"  ratio: {job_s / pandas_s:.2f}x the pandas read (goal <= 2x); memory {job_peak / pandas_peak:.2f}x")


def capture_overhead(workdir: Path, seconds: float, rounds: int) -> None:
    """Two realtime endpoints of friedman1 in one state home, one capturing: 16 clients, alternating."""
    from serving import gateway_load

    env = {**os.environ, "SAGEGATE_HOME": str(workdir / "state")}
    sagegate = str(Path(sys.executable).parent / "sagegate")
    config = str(ROOT / "models" / "friedman1.yaml")
    subprocess.run([sagegate, "run", config], env=env, check=True, stdout=subprocess.DEVNULL)
    plain = ["--set", "name=friedman1-plain", "--set", "monitoring.data_capture.enabled=false"]
    subprocess.run([sagegate, "run", config, *plain], env=env, check=True, stdout=subprocess.DEVNULL)
    os.environ["SAGEGATE_HOME"] = env["SAGEGATE_HOME"]
    from pipelines.local.gateway import start_gateway, stop_gateway
    from pipelines.state import Project, StateHome

    home = StateHome(Path(env["SAGEGATE_HOME"]))
    url = start_gateway(home, Project())["url"]
    body = b"0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5"
    figures: dict[str, list[tuple[float, float]]] = {"friedman1": [], "friedman1-plain": []}
    try:
        for model in figures:  # warm both model servers
            gateway_load(url, body, "text/csv", 16, 1.0, endpoint=f"sagegate-development-{model}-realtime")
        for _ in range(rounds):
            for model in figures:
                endpoint = f"sagegate-development-{model}-realtime"
                figures[model].append(gateway_load(url, body, "text/csv", 16, seconds, endpoint=endpoint))
    finally:
        stop_gateway(home)
    on, off = (np.median(np.array(figures[m]), axis=0) for m in ("friedman1", "friedman1-plain"))
    status = json.loads((home.serving / "capture" / "status.json").read_text())["endpoints"]
    captured = status["sagegate-development-friedman1-realtime"]
    print(f"gateway, boto3 invoke_endpoint, 1 row, 16 clients, median of {rounds} rounds of {seconds:.0f} s:")
    print(f"  capture off: {off[0]:.0f} req/s, p99 {off[1]:.1f} ms; capture on: {on[0]:.0f} req/s, p99 {on[1]:.1f} ms")
    p99, per_request = (on[1] / off[1] - 1) * 100, (off[0] / on[0] - 1) * 100
    print(f"  capture adds {p99:+.1f}% to p99 latency, {per_request:+.1f}% to time per request (goal <= 5%); "
          f"captured {captured['captured']}, dropped {captured['dropped']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="sagegate-monitor-bench-") as scratch:
        (Path(scratch) / "job").mkdir()
        monitor_job(Path(scratch) / "job", args.rows)
        capture_overhead(Path(scratch), args.seconds, args.rounds)


if __name__ == "__main__":
    main()
