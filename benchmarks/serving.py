"""Serving benchmark: our model server and the user's path vs `mlflow models serve` vs in-process predict.

One run, one model, same machine: `sagegate run` trains a RandomForest (100 trees, depth 10, 20
features) in a fresh state home and deploys it to a realtime endpoint, so the served archive is
the register job's (its verified ONNX conversion). Against it: `mlflow models serve` on the same
run's MLflow model, and the same pipeline's in-process scikit-learn `predict`. Cases: single-row
JSON and CSV at 1 and 16 clients (requests/s, p99; 16 clients are 4 processes of 4 threads) straight
to the model server and through the gateway with an unmodified boto3 `invoke_endpoint`; 100-row
batches at 4 clients (rows/s); the cold start from zero (first response vs process start + model load).

    python benchmarks/serving.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import joblib
import numpy as np
import pandas as pd
from botocore.config import Config
from sklearn.datasets import make_classification

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "containers" / "inference" / "serve.py"
FEATURES = [f"f{i}" for i in range(20)]
MODEL = "bench-forest"
ENDPOINT = f"sagegate-development-{MODEL}-realtime"
CONFIG = f"""
name: {MODEL}
task: classification
data: {{source: data.csv, target: label}}
model:
  class: sklearn.ensemble.RandomForestClassifier
  hyperparameters: {{n_estimators: 100, max_depth: 10, random_state: 0}}
quality_gate: {{metrics: {{accuracy: {{min: 0.5}}}}}}
deployment: {{type: realtime, max_instances: {os.cpu_count() or 1}, scale_in_cooldown: 3600}}
"""


def deploy(workdir: Path) -> tuple[Path, Path, str]:
    """`sagegate run` in a fresh state home: the served model's folder, its MLflow model and the gateway URL."""
    x, y = make_classification(n_samples=4000, n_features=20, n_informative=12, random_state=0)
    frame = pd.DataFrame(x, columns=FEATURES).assign(label=y)
    frame.to_csv(workdir / "data.csv", index=False)
    (workdir / "model.yaml").write_text(CONFIG)
    home = workdir / "state"
    env = {**os.environ, "SAGEGATE_HOME": str(home)}
    subprocess.run([str(Path(sys.executable).parent / "sagegate"), "run", "model.yaml"], cwd=workdir, env=env,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    os.environ["SAGEGATE_HOME"] = str(home)
    from pipelines.local.gateway import start_gateway
    from pipelines.local.s3 import LocalS3
    from pipelines.registry import find_version
    from pipelines.state import Project, StateHome

    state = StateHome(home)
    version = find_version(state, Project().registered_model(MODEL))
    if version["runtime"] != "onnx":
        raise SystemExit(f"the run did not compile the model: {version['runtime_reason']}")
    served = workdir / "model"
    with LocalS3(state) as s3:
        s3.download(version["model_data_uri"], workdir / "model.tar.gz")
    with tarfile.open(workdir / "model.tar.gz") as archive:
        archive.extractall(served, filter="data")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=state.mlflow_tracking_uri)
    location = client.get_model_version_download_uri(version["name"], version["version"])
    return served, Path(location.removeprefix("file://")), start_gateway(state, Project())["url"]


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
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


Request = Callable[[], None]  # raises when the answer is not a success


def _clients(make_request: Callable[[], Request], concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """`concurrency` client threads in this process: their latencies, failures and the seconds they took."""
    latencies: list[float] = []
    failures = [0]
    stop_at = time.monotonic() + seconds

    def client() -> None:
        request, mine = make_request(), []
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                request()
            except Exception:  # counted, and the benchmark refuses the case
                failures[0] += 1
            mine.append(time.perf_counter() - began)
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures[0], time.monotonic() - began


def client_processes(concurrency: int) -> int:
    """The load generator's processes for `concurrency` clients: 16 clients as 4 processes of 4 threads
    (through the gateway, 16 boto3 clients in one process reached 1.3k req/s, in 4 processes 2.3k)."""
    return 4 if concurrency >= 16 else 1


def closed_loop(
    make_request: Callable[[], Request], concurrency: int, seconds: float, processes: int = 1
) -> tuple[float, float]:
    """`concurrency` clients, each sending its next request when the last is answered: (requests/s, p99 ms).
    `make_request` runs once per client thread (its own connection) and returns the request to repeat.
    With `processes` > 1 the clients are threads of that many forked processes, starting together:
    sixteen clients in one Python process are bound by its GIL before any server is."""
    if processes == 1:
        parts = [_clients(make_request, concurrency, seconds)]
    else:
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        start_at = time.time() + 0.5

        def child() -> None:
            time.sleep(max(0.0, start_at - time.time()))
            results.put(_clients(make_request, concurrency // processes, seconds))

        children = [context.Process(target=child) for _ in range(processes)]
        for process in children:
            process.start()
        parts = [results.get(timeout=seconds + 120) for _ in children]
        for process in children:
            process.join()
    latencies = [value for part in parts for value in part[0]]
    failures = sum(part[1] for part in parts)
    if failures:
        raise RuntimeError(f"{failures} of {len(latencies)} requests failed")
    return len(latencies) / max(part[2] for part in parts), float(np.percentile(latencies, 99) * 1000)


def load(
    port: int, path: str, body: bytes, content_type: str, concurrency: int, seconds: float, processes: int = 1
) -> tuple[float, float]:
    """Straight to a server, on keep-alive connections. Every response must be 200."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}

    def make_request() -> Request:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def request() -> None:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")

        return request

    return closed_loop(make_request, concurrency, seconds, processes)


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


def gateway_load(
    url: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    seconds: float,
    endpoint: str = ENDPOINT,
    processes: int = 1,
) -> tuple[float, float]:
    """The user's path: boto3 `invoke_endpoint` through the gateway, one client per process shared by its threads."""
    clients: dict[int, object] = {}
    lock = threading.Lock()

    def make_request() -> Request:
        with lock:  # made in the process that uses it: a forked child must not share its parent's sockets
            runtime = clients.get(os.getpid())
            if runtime is None:
                runtime = clients[os.getpid()] = boto3.client(
                    "sagemaker-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                    aws_secret_access_key="local",
                    config=Config(max_pool_connections=concurrency, retries={"max_attempts": 0}),
                )  # fmt: skip

        def request() -> None:
            runtime.invoke_endpoint(EndpointName=endpoint, ContentType=content_type, Body=body)["Body"].read()

        return request

    return closed_loop(make_request, concurrency, seconds, processes)


def boto3_floor(seconds: float, concurrency: int, workdir: Path) -> tuple[float, float]:
    """Requests/s of boto3 `invoke_endpoint` against a server that does no work (uvicorn, in its own
    process): the user's path can never be faster than this, whatever the gateway and the model cost."""
    port = free_port()
    server = start(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "instant_server:app",
         "--http", "httptools", "--loop", "uvloop", "--port", str(port), "--log-level", "warning"],
        port, "/ping", workdir / "instant.log",
    )  # fmt: skip
    try:
        url, processes = f"http://127.0.0.1:{port}", client_processes(concurrency)
        return gateway_load(url, b"0.1", "text/csv", concurrency, seconds, processes=processes)
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    workdir = Path(tempfile.mkdtemp(prefix="sagegate-bench-"))
    served, mlflow_model, gateway = deploy(workdir)
    model = joblib.load(served / "model.joblib")
    frame = pd.read_csv(workdir / "data.csv")[FEATURES]
    one, hundred = frame.iloc[[0]], frame.iloc[:100]
    bodies = {
        "json": (
            json.dumps({"instances": one.values.tolist()}).encode(),
            json.dumps({"dataframe_split": one.to_dict(orient="split")}).encode(),
            "application/json",
        ),
        "csv": (one.to_csv(header=False, index=False).encode(), one.to_csv(index=False).encode(), "text/csv"),
    }  # fmt: skip (mlflow's CSV needs a header, its JSON a dataframe_split)

    results: dict[str, float] = {}
    results["inprocess_1row_rps"] = in_process_rate(lambda: model.predict(one), args.seconds)
    results["inprocess_100row_rows_per_s"] = 100 * in_process_rate(lambda: model.predict(hundred), args.seconds)
    ours_port, mlflow_port = free_port(), free_port()
    ours = start(
        [sys.executable, str(SERVE), "--model-dir", str(served), "--bind", f"127.0.0.1:{ours_port}",
         "--workers", str(os.cpu_count() or 1)], ours_port, "/ping", workdir / "ours.log",
    )  # fmt: skip
    theirs = start(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(mlflow_model), "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(mlflow_port)], mlflow_port, "/ping", workdir / "mlflow.log",
    )  # fmt: skip
    try:
        for concurrency in (1, 16):
            processes = client_processes(concurrency)
            for name, (body, theirs_body, content_type) in bodies.items():
                key = f"{name}_c{concurrency}"
                results[f"ours_{key}_rps"], results[f"ours_{key}_p99_ms"] = load(
                    ours_port, "/invocations", body, content_type, concurrency, args.seconds, processes
                )
                results[f"gateway_{key}_rps"], results[f"gateway_{key}_p99_ms"] = gateway_load(
                    gateway, body, content_type, concurrency, args.seconds, processes=processes
                )
                results[f"mlflow_{key}_rps"], results[f"mlflow_{key}_p99_ms"] = load(
                    mlflow_port, "/invocations", theirs_body, content_type, concurrency, args.seconds, processes
                )
        # 4 clients: a keep-alive connection stays with the worker that accepted it, and 2 connections on
        # 2 workers land on the same one half the time (2 clients: 161-272k rows/s, 4 clients: 267-285k)
        csv_hundred = hundred.to_csv(header=False, index=False).encode()
        results["ours_100row_rows_per_s"] = 100 * load(ours_port, "/invocations", csv_hundred, "text/csv", 4,
                                                       args.seconds)[0]  # fmt: skip
        mlflow_hundred = hundred.to_csv(index=False).encode()
        results["mlflow_100row_rows_per_s"] = 100 * load(mlflow_port, "/invocations", mlflow_hundred, "text/csv", 4,
                                                         args.seconds)[0]  # fmt: skip
    finally:
        stop(ours)
        stop(theirs)
        subprocess.run([str(Path(sys.executable).parent / "sagegate"), "gateway", "stop"], check=False,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    results["cold_start_s"], results["process_and_load_s"] = cold_start(served)
    for concurrency in (1, 16):
        floor = boto3_floor(args.seconds, concurrency, workdir)
        results[f"boto3_floor_c{concurrency}_rps"], results[f"boto3_floor_c{concurrency}_p99_ms"] = floor
    report(results, args.seconds)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw figures: {workdir / 'results.json'}")
    shutil.rmtree(workdir / "state", ignore_errors=True)


def report(results: dict[str, float], seconds: float) -> None:
    print(f"model: RandomForest 100 trees depth 10, 20 features, served by ONNX Runtime; {os.cpu_count()} cores; "
          f"{seconds:.0f} s per case")  # fmt: skip
    print(f"in-process scikit-learn predict: 1 row {results['inprocess_1row_rps']:.0f}/s, 100 rows "
          f"{results['inprocess_100row_rows_per_s']:.0f} rows/s")  # fmt: skip
    print(f"{'case':<16}{'path':<15}{'req/s':>9}{'mlflow':>9}{'x mlflow':>10}{'p99 ms':>9}{'mlflow p99':>12}"
          f"{'p99 ratio':>11}")  # fmt: skip
    for concurrency in (1, 16):
        for name in ("json", "csv"):
            key = f"{name}_c{concurrency}"
            theirs_rps, theirs_p99 = results[f"mlflow_{key}_rps"], results[f"mlflow_{key}_p99_ms"]
            for path, label in (("ours", "model server"), ("gateway", "boto3+gateway")):
                rps, p99 = results[f"{path}_{key}_rps"], results[f"{path}_{key}_p99_ms"]
                print(
                    f"{'1-row ' + name + ' c' + str(concurrency):<16}{label:<15}{rps:>9.0f}{theirs_rps:>9.0f}"
                    f"{rps / theirs_rps:>9.1f}x{p99:>9.2f}{theirs_p99:>12.2f}{p99 / theirs_p99:>10.2f}x"
                )
    print(
        f"100-row csv: ours {results['ours_100row_rows_per_s']:.0f} rows/s, mlflow "
        f"{results['mlflow_100row_rows_per_s']:.0f} rows/s; ours/in-process scikit-learn = "
        f"{results['ours_100row_rows_per_s'] / results['inprocess_100row_rows_per_s']:.1f}x"
    )
    for concurrency in (1, 16):
        floor, floor_p99 = results[f"boto3_floor_c{concurrency}_rps"], results[f"boto3_floor_c{concurrency}_p99_ms"]
        print(
            f"boto3 invoke_endpoint against a server doing nothing, {concurrency} client(s): {floor:.0f} req/s (the "
            f"user's path's ceiling: {floor / results[f'mlflow_csv_c{concurrency}_rps']:.1f}x mlflow; through the "
            f"gateway {results[f'gateway_csv_c{concurrency}_rps'] / floor:.2f} of it); p99 "
            f"{floor_p99:.2f} ms = {floor_p99 / results[f'mlflow_csv_c{concurrency}_p99_ms']:.2f}x mlflow's"
        )
    print(
        f"cold start from zero: first response {results['cold_start_s']:.2f} s vs process start + model load "
        f"{results['process_and_load_s']:.2f} s = {results['cold_start_s'] / results['process_and_load_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
