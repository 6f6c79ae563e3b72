"""One model's server process, supervised: started on demand, restarted once if it died, stopped when idle.

The process is `containers/inference/serve.py` under gunicorn on a unix socket — the same code
a SageMaker inference container runs. The gateway owns one `ModelServer` per SageMaker model
and stops it after the endpoint's scale-in cooldown without traffic (scale to zero).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from pipelines.containers import container_code
from pipelines.statefiles import StateFileError, process_alive, process_token, read_json, write_json

START_TIMEOUT_SECONDS = 120


class ModelServerError(Exception):
    """The model server could not start (it exited, or did not answer in time)."""


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the gateway's private line to a model server."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def unpack_model(model_data: Path, folder: Path) -> Path:
    """`folder/model` holding the unpacked `model.tar.gz`, complete or absent: the archive is
    unpacked beside it and renamed into place, so a kill mid-unpack never leaves half a model."""
    model_dir = folder / "model"
    if (model_dir / "model.joblib").is_file():
        return model_dir
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=folder))
    try:
        with tarfile.open(model_data) as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def serving_runtime(model_data: Path) -> dict[str, str]:
    """What serves a model archive (its `serving.json`, written by the register job): ONNX Runtime for a
    verified conversion, else scikit-learn, with the reason."""
    try:
        with tarfile.open(model_data) as archive:
            member = archive.extractfile("serving.json")
            return json.load(member) if member else {"runtime": "sklearn", "reason": "serving.json is not a file"}
    except KeyError:
        return {"runtime": "sklearn", "reason": "archive without serving.json (not from the register job)"}
    except (OSError, tarfile.TarError, ValueError) as error:
        return {"runtime": "unknown", "reason": f"{model_data}: {error}"}


def reap_orphans(models_folder: Path) -> list[int]:
    """Kill the model servers a dead gateway left behind (each records its process in `server.json`).

    A gateway killed outright cannot stop its servers: they would serve an unlinked socket
    forever. Only one gateway serves a state folder, so the new one reaps every live record.
    """
    reaped = []
    for record in models_folder.glob("*/server.json"):
        try:
            token = read_json(record)["process"]
        except (StateFileError, KeyError, TypeError):
            token = None
        if token and process_alive(token):
            pid = int(token.partition(":")[0])
            try:
                os.killpg(pid, signal.SIGKILL)
                reaped.append(pid)
            except ProcessLookupError:
                pass
        record.unlink(missing_ok=True)
    return reaped


class ModelServer:
    """One model's server process and the gateway's bookkeeping about it."""

    def __init__(self, folder: Path, model_name: str, model_data: Path, workers: int, cooldown: float) -> None:
        self.model_name = model_name
        self.model_data = model_data
        self.workers = max(1, workers)
        self.folder = folder
        # AF_UNIX paths are limited to ~107 bytes: the socket lives under the temp dir, named by hash
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
        self.socket = Path(tempfile.gettempdir()) / f"sagegate-{digest}.sock"
        self.record = folder / "server.json"  # which process serves, for `reap_orphans`
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.local = threading.local()
        self.last_used = time.monotonic()
        self.cooldown = cooldown  # the endpoint's scale-in cooldown, refreshed per request
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

    def idle_past_cooldown(self, now: float) -> bool:
        return self.running and self.in_flight == 0 and now - self.last_used > self.cooldown

    def ensure_started(self) -> float | None:
        """Start the server if it is not running; the cold-start seconds when it had to."""
        with self.lock:
            if self.running:
                return None
            began = time.monotonic()
            model_dir = unpack_model(self.model_data, self.folder)
            self.socket.unlink(missing_ok=True)
            log_path = self.folder / "server.log"
            with log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable,
                     str(container_code("inference", "serve.py")), "--model-dir", str(model_dir),
                     "--bind", f"unix:{self.socket}", "--workers", str(self.workers)],
                    stdout=log, stderr=log, start_new_session=True,
                )  # fmt: skip
            write_json(self.record, {"process": process_token(self.process.pid)})
            deadline = began + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ModelServerError(f"model server for {self.model_name} exited while starting (see {log_path})")
                if self.socket.exists() and self._ping():
                    break
                time.sleep(0.02)
            else:
                self._stop_process()
                raise ModelServerError(
                    f"model server for {self.model_name} did not start in {START_TIMEOUT_SECONDS} s (see {log_path})"
                )
            self.starts += 1
            self.local = threading.local()
            cold = time.monotonic() - began
            self.cold_starts.append(round(cold, 3))
            return cold

    def _ping(self) -> bool:
        try:
            connection = UnixConnection(str(self.socket), timeout=2)
            connection.request("GET", "/ping")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    def _connection(self) -> UnixConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = UnixConnection(str(self.socket), timeout=60)
        return connection

    def forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST /invocations; on a broken connection the request is retried once on a new one, after
        `ensure_started` restarted the server if it died (a stale keep-alive connection needs no restart).

        A thread never clears `self.process` itself: another thread may already have started the
        replacement, which would then be orphaned."""
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
        raise AssertionError("unreachable")

    def _stop_process(self) -> None:
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
        self.record.unlink(missing_ok=True)

    def stop(self) -> None:
        with self.lock:
            self._stop_process()
