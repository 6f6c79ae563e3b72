"""Local sagemaker-runtime: `POST /endpoints/{name}/invocations` for the local endpoints.

An unmodified `boto3.client("sagemaker-runtime", endpoint_url=...)` or the SDK's Predictor
talks to it. It routes each request the way SageMaker does — production variants by weight
(or `TargetVariant`), inference components (or `InferenceComponentName`) — to a model server
(`containers/inference/serve.py` under gunicorn, on a unix socket) that it starts on the first
request and stops after the endpoint's scale-in cooldown without traffic: realtime endpoints
scale to zero for real. Serverless endpoints enforce `MaxConcurrency` with AWS's throttling
error. Errors use sagemaker-runtime's codes (ValidationError, ModelError, ThrottlingException).

Run by gunicorn as one process with threads (`sagegate gateway start`): its state — servers,
in-flight counts, per-variant invocation counts — lives in that process and is written to
`serving/metrics.json` for `sagegate endpoints show`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pipelines.containers import container_code
from pipelines.local.endpoints import EndpointManager
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError, locked, read_json, write_json

DEFAULT_SCALE_IN_COOLDOWN = 300.0
MAX_PAYLOAD = 6 * 1024 * 1024
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class InvocationError(Exception):
    """An error sagemaker-runtime would return: HTTP status, error code, message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class ModelServer:
    """One model's server process: started on demand, stopped when idle (scale to zero)."""

    def __init__(self, home: StateHome, model_name: str, model_data: Path, workers: int) -> None:
        self.model_name = model_name
        self.model_data = model_data
        self.workers = max(1, workers)
        self.folder = home.root / "serving" / "models" / model_name
        # AF_UNIX paths are limited to ~107 bytes: the socket lives under the temp dir, named by hash
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
        self.socket = Path(tempfile.gettempdir()) / f"sagegate-{digest}.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.last_used = time.monotonic()
        self.cooldown = DEFAULT_SCALE_IN_COOLDOWN  # the endpoint's scale-in cooldown, refreshed per request
        self.in_flight = 0
        self._in_flight_lock = threading.Lock()  # gunicorn threads: `+= 1` on an attribute is not atomic
        self.starts = 0
        self.cold_starts: list[float] = []

    def enter(self) -> None:
        with self._in_flight_lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self._in_flight_lock:
            self.in_flight -= 1
            self.last_used = time.monotonic()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _unpack(self) -> Path:
        model_dir = self.folder / "model"
        if not (model_dir / "model.joblib").is_file():
            shutil.rmtree(model_dir, ignore_errors=True)
            model_dir.mkdir(parents=True)
            with tarfile.open(self.model_data) as archive:
                archive.extractall(model_dir, filter="data")
        return model_dir

    def ensure_started(self) -> float | None:
        """Start the server if it is not running; the cold-start seconds when it had to."""
        with self.lock:
            if self.running:
                return None
            began = time.monotonic()
            model_dir = self._unpack()
            self.socket.unlink(missing_ok=True)
            log = (self.folder / "server.log").open("ab")
            self.process = subprocess.Popen(
                [sys.executable, str(container_code("inference", "serve.py")), "--model-dir", str(model_dir),
                 "--bind", f"unix:{self.socket}", "--workers", str(self.workers)],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
            log.close()
            deadline = began + 120
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise InvocationError(
                        424, "ModelError", f"model server for {self.model_name} exited while starting "
                        f"(see {self.folder / 'server.log'})", OriginalStatusCode=500,
                    )  # fmt: skip
                if self.socket.exists() and self._ping():
                    break
                time.sleep(0.02)
            else:
                self.stop()
                raise InvocationError(424, "ModelError", f"model server for {self.model_name} did not start in 120 s")
            self.starts += 1
            self.local = threading.local()
            cold = time.monotonic() - began
            self.cold_starts.append(round(cold, 3))
            return cold

    def _ping(self) -> bool:
        try:
            connection = _UnixConnection(str(self.socket), timeout=2)
            connection.request("GET", "/ping")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    def _connection(self) -> _UnixConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = _UnixConnection(str(self.socket), timeout=60)
        return connection

    def forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST /invocations; a dead server is restarted once and the request retried."""
        for attempt in (1, 2):
            self.ensure_started()
            connection = self._connection()
            try:
                connection.request("POST", "/invocations", body=body, headers=headers)
                response = connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
                if self.running:  # the server is alive: the connection just went stale; retry on a new one
                    continue
                with self.lock:
                    self.process = None
        raise AssertionError("unreachable")

    def stop(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                # idle (no request in flight): gunicorn's quick shutdown, not the graceful one that
                # would wait for the gateway's idle keep-alive connections
                try:
                    os.killpg(self.process.pid, signal.SIGQUIT)
                    self.process.wait(timeout=5)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None


class Gateway:
    """The WSGI app: routing, concurrency limits, scale-to-zero and counters."""

    def __init__(self, home: StateHome, project: Project) -> None:
        self.home = home
        self.project = project
        self.manager = EndpointManager(home, project)
        self.servers: dict[str, ModelServer] = {}
        self.servers_lock = threading.Lock()
        self.limits: dict[str, tuple[int, threading.BoundedSemaphore]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.throttled: dict[str, int] = {}
        self.counters_lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._state_mtime = 0.0
        self.metrics_path = home.root / "serving" / "metrics.json"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if self.metrics_path.is_file():  # invocation counts survive gateway restarts
            try:
                previous = read_json(self.metrics_path)
                self.counts, self.throttled = previous.get("invocations", {}), previous.get("throttled", {})
            except (StateFileError, AttributeError) as error:
                logging.getLogger(__name__).warning("starting counters from zero: %s", error)
        self._stop = threading.Event()
        threading.Thread(target=self._housekeeping, daemon=True, name="scale-in").start()

    # -- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        try:
            mtime = self.manager.path.stat().st_mtime
        except FileNotFoundError:
            return {"endpoints": {}, "endpoint_configs": {}, "models": {}, "inference_components": {}}
        if mtime != self._state_mtime:
            self._state, self._state_mtime = self.manager.snapshot(), mtime
        return self._state

    def _server(self, model_name: str, workers: int) -> ModelServer:
        with self.servers_lock:
            server = self.servers.get(model_name)
            if server is None:
                server = self.servers[model_name] = ModelServer(
                    self.home, model_name, self.manager.model_data_path(model_name), workers
                )
            return server

    def route(self, endpoint_name: str, target_variant: str | None, component: str | None) -> dict[str, Any]:
        """Which variant and model serve this request, and with which limits."""
        state = self.state()
        endpoint = state["endpoints"].get(endpoint_name)
        if endpoint is None or not endpoint.get("EndpointConfigName"):
            raise InvocationError(
                400, "ValidationError", f"Endpoint {endpoint_name} of account {self.project.account} not found."
            )
        config = state["endpoint_configs"][endpoint["EndpointConfigName"]]
        variants = config["ProductionVariants"]
        if target_variant:
            variants = [v for v in variants if v["VariantName"] == target_variant]
            if not variants:
                raise InvocationError(
                    400, "ValidationError", f"Variant {target_variant} not found for {endpoint_name}."
                )
        components = {
            name: c
            for name, c in state["inference_components"].items()
            if c["EndpointName"] == endpoint_name and c.get("Specification")
        }
        if component:
            if component not in components:
                raise InvocationError(400, "ValidationError", f"Inference component {component} not found.")
            chosen = components[component]
            variant = next((v for v in variants if v["VariantName"] == chosen["VariantName"]), variants[0])
            model_name = chosen["Specification"]["ModelName"]
        else:
            weights = [float(v.get("InitialVariantWeight", 1.0)) for v in variants]
            variant = random.choices(variants, weights=weights)[0] if len(variants) > 1 else variants[0]
            model_name = variant.get("ModelName")
            if model_name is None:  # scale-to-zero shape: the model is an inference component
                hosted = [c for c in components.values() if c["VariantName"] == variant["VariantName"]]
                if not hosted:
                    raise InvocationError(
                        400, "ValidationError", f"Endpoint {endpoint_name} has no inference component to invoke."
                    )
                model_name = hosted[0]["Specification"]["ModelName"]
        serverless = variant.get("ServerlessConfig")
        scaling = variant.get("ManagedInstanceScaling", {})
        return {
            "variant": variant["VariantName"],
            "model": model_name,
            "max_concurrency": serverless["MaxConcurrency"] if serverless else None,
            "workers": int(scaling.get("MaxInstanceCount", 1)) if not serverless else 1,
            "cooldown": self._cooldown(endpoint_name),
        }

    def _cooldown(self, endpoint_name: str) -> float:
        """The scale-in cooldown of the endpoint's target-tracking policy (realtime, as registered by
        the gate or `provision`), else $SAGEGATE_SCALE_IN_COOLDOWN (serverless: AWS's idle release)."""
        state = self.state()
        components = {f"inference-component/{n}" for n, c in state["inference_components"].items()
                      if c["EndpointName"] == endpoint_name}  # fmt: skip
        for policy in state.get("scaling_policies", {}).values():
            config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
            if policy["ResourceId"] in components and "ScaleInCooldown" in config:
                return float(config["ScaleInCooldown"])
        return float(os.environ.get("SAGEGATE_SCALE_IN_COOLDOWN", DEFAULT_SCALE_IN_COOLDOWN))

    # -- requests -----------------------------------------------------------------------------
    def invoke(self, endpoint_name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        route = self.route(
            endpoint_name,
            headers.get("x-amzn-sagemaker-target-variant"),
            headers.get("x-amzn-sagemaker-inference-component"),
        )
        limit = None
        if route["max_concurrency"]:
            with self.servers_lock:
                size, limit = self.limits.get(endpoint_name, (0, None))
                if limit is None or size != route["max_concurrency"]:  # new endpoint, or its config changed
                    limit = threading.BoundedSemaphore(route["max_concurrency"])
                    self.limits[endpoint_name] = (route["max_concurrency"], limit)
            if not limit.acquire(blocking=False):
                with self.counters_lock:
                    self.throttled[endpoint_name] = self.throttled.get(endpoint_name, 0) + 1
                raise InvocationError(
                    400, "ThrottlingException", f"Maximum concurrency ({route['max_concurrency']}) reached for "
                    f"endpoint {endpoint_name}; retry later.",
                )  # fmt: skip
        server = self._server(route["model"], route["workers"])
        server.cooldown = route["cooldown"]
        server.enter()
        try:
            forwarded = {
                "Content-Type": headers.get("content-type", "application/json"),
                "Accept": headers.get("accept", "application/json"),
                "X-Amzn-SageMaker-Custom-Attributes": headers.get("x-amzn-sagemaker-custom-attributes", ""),
            }
            status, response_headers, payload = server.forward(body, forwarded)
        except (OSError, http.client.HTTPException) as error:
            raise InvocationError(424, "ModelError", f"model server failed: {error}", OriginalStatusCode=500) from None
        finally:
            server.leave()
            if limit is not None:
                limit.release()
        with self.counters_lock:
            counts = self.counts.setdefault(endpoint_name, {})
            counts[route["variant"]] = counts.get(route["variant"], 0) + 1
        if status != 200:
            message = payload.decode(errors="replace")
            try:
                message = json.loads(message)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise InvocationError(
                424, "ModelError", f"Received client error ({status}) from primary with message \"{message}\".",
                OriginalStatusCode=status, OriginalMessage=message,
            )  # fmt: skip
        extra = {"X-Amzn-Invoked-Production-Variant": route["variant"]}
        if headers.get("x-amzn-sagemaker-custom-attributes"):
            extra["X-Amzn-SageMaker-Custom-Attributes"] = headers["x-amzn-sagemaker-custom-attributes"]
        return 200, {"Content-Type": response_headers.get("Content-Type", "application/json"), **extra}, payload

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        parts = path.strip("/").split("/")
        try:
            if path == "/ping":
                return self._respond(start_response, 200, {"Content-Type": "application/json"}, b"{}")
            if len(parts) != 3 or parts[0] != "endpoints" or parts[2] not in ("invocations",):
                raise InvocationError(404, "UnknownOperationException", f"no such operation: {path}")
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > MAX_PAYLOAD:
                raise InvocationError(413, "ValidationError", f"Request body of {length} bytes exceeds 6 MB.")
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {
                key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
            }
            if environ.get("CONTENT_TYPE"):
                headers["content-type"] = environ["CONTENT_TYPE"]
            status, response_headers, payload = self.invoke(unquote(parts[1]), body, headers)
            return self._respond(start_response, status, response_headers, payload)
        except InvocationError as error:
            payload = json.dumps({"message": error.message, **error.fields}).encode()
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}
            return self._respond(start_response, error.status, headers, payload)

    @staticmethod
    def _respond(start_response: StartResponse, status: int, headers: dict[str, str], body: bytes) -> list[bytes]:
        start_response(f"{status} {http.client.responses.get(status, 'Error')}", [*headers.items()])
        return [body]

    # -- scale in -----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        while not self._stop.wait(0.25):
            try:
                now = time.monotonic()
                for server in list(self.servers.values()):
                    if server.running and server.in_flight == 0 and now - server.last_used > server.cooldown:
                        server.stop()
                self.write_metrics()
            except Exception:  # keep scaling in and reporting whatever one pass hit
                logging.getLogger(__name__).exception("gateway housekeeping failed")

    def write_metrics(self) -> None:
        with self.counters_lock:  # a consistent copy: request threads keep counting meanwhile
            invocations = {endpoint: dict(counts) for endpoint, counts in self.counts.items()}
            throttled = dict(self.throttled)
        snapshot = {
            "updated": time.time(),
            "pid": os.getpid(),
            "invocations": invocations,
            "throttled": throttled,
            "servers": {
                name: {
                    "running": server.running,
                    "pid": server.process.pid if server.running and server.process else None,
                    "workers": server.workers,
                    "starts": server.starts,
                    "cold_starts_seconds": server.cold_starts[-10:],
                    "idle_seconds": round(time.monotonic() - server.last_used, 1),
                }
                for name, server in list(self.servers.items())
            },
        }
        write_json(self.metrics_path, snapshot)

    def shutdown(self) -> None:
        self._stop.set()
        for server in list(self.servers.values()):
            server.stop()
        self.write_metrics()


def serve(port: int, threads: int = 64) -> None:
    """Run the gateway in the foreground: gunicorn, one process (shared state), many threads."""
    from gunicorn.app.base import BaseApplication

    gateways: list[Gateway] = []

    class GatewayServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": 120,
                "keepalive": 75,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "worker_exit": lambda server, worker: [g.shutdown() for g in gateways],
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Gateway:
            gateway = Gateway(StateHome.from_env(), Project.from_env())
            gateways.append(gateway)
            return gateway

    GatewayServer().run()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gateway_file(home: StateHome) -> Path:
    return home.root / "serving" / "gateway.json"


def running_gateway(home: StateHome) -> dict[str, Any] | None:
    """The gateway serving this state folder, if one is up (pid alive and answering /ping)."""
    path = gateway_file(home)
    if not path.is_file():
        return None
    try:
        info = read_json(path)
    except StateFileError:
        path.unlink(missing_ok=True)
        return None
    try:
        os.kill(info["pid"], 0)
        connection = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=2)
        connection.request("GET", "/ping")
        if connection.getresponse().status == 200:
            return info
    except OSError:
        pass
    path.unlink(missing_ok=True)
    return None


def start_gateway(home: StateHome, project: Project, port: int | None = None) -> dict[str, Any]:
    """Start the gateway in the background (or return the one already running). Two commands
    starting it at once get the same gateway: the check and the start hold the file's lock."""
    with locked(gateway_file(home)):
        return _start_gateway(home, project, port)


def _start_gateway(home: StateHome, project: Project, port: int | None) -> dict[str, Any]:
    running = running_gateway(home)
    if running:
        return running
    port = port or _free_port()
    log_path = home.root / "serving" / "gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "SAGEGATE_HOME": str(home.root),
        "SAGEGATE_PROJECT": project.prefix,
        "SAGEGATE_ENVIRONMENT": project.environment,
        "AWS_DEFAULT_REGION": project.region,
        "SAGEGATE_ACCOUNT_ID": project.account,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.local.gateway", "--port", str(port)],
            stdout=log, stderr=log, env=environment, start_new_session=True,
        )  # fmt: skip
    info = {"pid": process.pid, "port": port, "url": f"http://127.0.0.1:{port}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OSError(f"the local runtime gateway exited at start (see {log_path})")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                write_json(gateway_file(home), info)
                return info
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise OSError(f"the local runtime gateway did not answer within 30 s (see {log_path})")


def stop_gateway(home: StateHome) -> bool:
    info = running_gateway(home)
    if info is None:
        return False
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(info["pid"], 0)
        except OSError:
            break
        time.sleep(0.05)
    gateway_file(home).unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="local sagemaker-runtime gateway")
    parser.add_argument("--port", type=int, default=8080)
    serve(parser.parse_args().port)
