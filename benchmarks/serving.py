"""Serving benchmark: our model server vs `mlflow models serve` vs in-process predict, as ratios.

One run, same model (RandomForest, 100 trees, depth 10, 20 features), same machine, same
client: single-row JSON and CSV at concurrency 1 and 16 (requests/s, p99), 100-row batches
(rows/s), and the cold start from zero (first response vs process start + model load alone).
Also reports the full local endpoint path (boto3-shaped requests through the gateway).

    python benchmarks/serving.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "containers" / "inference" / "serve.py"
FEATURES = [f"f{i}" for i in range(20)]


def build_model(folder: Path) -> tuple[Pipeline, pd.DataFrame]:
    x, y = make_classification(n_samples=4000, n_features=20, n_informative=12, random_state=0)
    frame = pd.DataFrame(x, columns=FEATURES)
    model = Pipeline([("model", RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0))])
    model.fit(frame, y)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    (folder / "metadata.json").write_text(json.dumps({"features": FEATURES, "task": "classification"}))
    return model, frame


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server on {port} not ready")


def start(command: list[str], port: int, ping: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow execs uvicorn
        process = subprocess.Popen(
            command, stdout=output, stderr=output, start_new_session=True, env={**os.environ, "PATH": path}
        )
    try:
        wait_ready(port, ping)
    except RuntimeError:
        stop(process)
        raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}") from None
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGQUIT)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def load(port: int, path: str, body: bytes, content_type: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """Closed-loop load on keep-alive connections: (requests/s, p99 ms). Every response must be 200."""
    latencies: list[float] = []
    errors: list[int] = []
    stop_at = time.monotonic() + seconds
    headers = {"Content-Type": content_type, "Accept": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - began)
            if response.status != 200:
                errors.append(response.status)
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests (statuses {set(errors)})")
    return len(latencies) / elapsed, float(np.percentile(latencies, 99) * 1000)


def in_process_rate(call: Callable[[], object], seconds: float) -> float:
    count, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        call()
        count += 1
    return count / seconds


def cold_start(model_dir: Path, runs: int = 3) -> tuple[float, float]:
    """Median seconds: spawn → first /invocations answered, vs spawn → model loaded (no server)."""
    row = ",".join("0.1" for _ in FEATURES).encode()
    ours, floor = [], []
    for _ in range(runs):
        port = free_port()
        began = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, str(SERVE), "--model-dir", str(model_dir), "--bind", f"127.0.0.1:{port}",
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("POST", "/invocations", body=row, headers={"Content-Type": "text/csv"})
                if connection.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.005)
        ours.append(time.monotonic() - began)
        stop(process)
        began = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(SERVE.parent)!r}); import inference; "
             f"inference.model_fn({str(model_dir)!r})"], check=True,
        )  # fmt: skip
        floor.append(time.monotonic() - began)
    return statistics.median(ours), statistics.median(floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    workdir = Path(tempfile.mkdtemp(prefix="sagegate-bench-"))
    model, frame = build_model(workdir / "model")
    one = frame.iloc[[0]]
    hundred = frame.iloc[:100]
    csv_one = one.to_csv(header=False, index=False).encode()
    json_one = json.dumps({"instances": one.values.tolist()}).encode()
    csv_hundred = hundred.to_csv(header=False, index=False).encode()

    import mlflow.sklearn

    mlflow.sklearn.save_model(
        model, workdir / "mlflow-model", serialization_format="cloudpickle",
        pip_requirements=["scikit-learn", "pandas"],
    )  # fmt: skip
    mlflow_csv_one = one.to_csv(index=False).encode()  # mlflow's CSV needs a header
    mlflow_json_one = json.dumps({"dataframe_split": one.to_dict(orient="split")}).encode()
    mlflow_csv_hundred = hundred.to_csv(index=False).encode()

    results: dict[str, float] = {}
    results["inprocess_1row_rps"] = in_process_rate(lambda: model.predict(one), args.seconds)
    results["inprocess_100row_rows_per_s"] = 100 * in_process_rate(lambda: model.predict(hundred), args.seconds)

    ours_port, mlflow_port = free_port(), free_port()
    workers = str(os.cpu_count() or 1)
    ours = start(
        [sys.executable, str(SERVE), "--model-dir", str(workdir / "model"), "--bind", f"127.0.0.1:{ours_port}",
         "--workers", workers], ours_port, "/ping", workdir / "ours.log",
    )  # fmt: skip
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    theirs = start(
        [str(mlflow_bin), "models", "serve", "-m", str(workdir / "mlflow-model"), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(mlflow_port)], mlflow_port, "/ping", workdir / "mlflow.log",
    )  # fmt: skip
    try:
        for concurrency in (1, 16):
            for name, body, theirs_body, content_type in (
                ("json", json_one, mlflow_json_one, "application/json"),
                ("csv", csv_one, mlflow_csv_one, "text/csv"),
            ):
                rps, p99 = load(ours_port, "/invocations", body, content_type, concurrency, args.seconds)
                m_rps, m_p99 = load(mlflow_port, "/invocations", theirs_body, content_type, concurrency, args.seconds)
                results[f"ours_{name}_c{concurrency}_rps"], results[f"ours_{name}_c{concurrency}_p99_ms"] = rps, p99
                results[f"mlflow_{name}_c{concurrency}_rps"] = m_rps
                results[f"mlflow_{name}_c{concurrency}_p99_ms"] = m_p99
        rps, _ = load(ours_port, "/invocations", csv_hundred, "text/csv", 2, args.seconds)
        results["ours_100row_rows_per_s"] = 100 * rps
        m_rps, _ = load(mlflow_port, "/invocations", mlflow_csv_hundred, "text/csv", 2, args.seconds)
        results["mlflow_100row_rows_per_s"] = 100 * m_rps
    finally:
        stop(ours)
        stop(theirs)
    results["cold_start_s"], results["process_and_load_s"] = cold_start(workdir / "model")

    print(f"model: RandomForest 100 trees depth 10, 20 features; {os.cpu_count()} cores; {args.seconds:.0f} s each")
    print(f"in-process predict: 1 row {results['inprocess_1row_rps']:.0f}/s, 100 rows "
          f"{results['inprocess_100row_rows_per_s']:.0f} rows/s")  # fmt: skip
    print(f"{'case':<18}{'ours req/s':>12}{'mlflow req/s':>14}{'x mlflow':>10}{'x in-proc':>11}{'ours p99':>10}"
          f"{'mlflow p99':>12}{'p99 ratio':>11}")  # fmt: skip
    for concurrency in (1, 16):
        for name in ("json", "csv"):
            key = f"{name}_c{concurrency}"
            ours_rps, theirs_rps = results[f"ours_{key}_rps"], results[f"mlflow_{key}_rps"]
            ours_p99, theirs_p99 = results[f"ours_{key}_p99_ms"], results[f"mlflow_{key}_p99_ms"]
            print(
                f"{'1-row ' + name + ' c' + str(concurrency):<18}{ours_rps:>12.0f}{theirs_rps:>14.0f}"
                f"{ours_rps / theirs_rps:>9.2f}x{ours_rps / results['inprocess_1row_rps']:>10.2f}x"
                f"{ours_p99:>9.1f}ms{theirs_p99:>10.1f}ms{ours_p99 / theirs_p99:>10.2f}x"
            )
    print(
        f"100-row csv: ours {results['ours_100row_rows_per_s']:.0f} rows/s, mlflow "
        f"{results['mlflow_100row_rows_per_s']:.0f} rows/s; ours/in-process = "
        f"{results['ours_100row_rows_per_s'] / results['inprocess_100row_rows_per_s']:.2f}x"
    )
    print(
        f"cold start from zero: first response {results['cold_start_s']:.2f} s vs process start + model load "
        f"{results['process_and_load_s']:.2f} s = {results['cold_start_s'] / results['process_and_load_s']:.2f}x"
    )
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw figures: {workdir / 'results.json'}")
    shutil.rmtree(workdir / "mlflow-model", ignore_errors=True)


if __name__ == "__main__":
    main()
