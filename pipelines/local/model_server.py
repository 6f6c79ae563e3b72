"""One model's server process, supervised: started on demand, restarted once if it died, stopped when idle.

The process is `containers/inference/serve.py` under gunicorn on a unix socket — the same code
a SageMaker inference container runs. The gateway owns one `ModelServer` per SageMaker model
and stops it after the endpoint's scale-in cooldown without traffic (scale to zero). The gateway
forwards on its event loop over pooled keep-alive connections, each an asyncio protocol whose
responses httptools parses: the hop costs tens of microseconds.
"""

from __future__ import annotations

import asyncio
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

import httptools

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


class ModelConnection(asyncio.Protocol):
    """One keep-alive connection to a model server: writes a request, parses the response with httptools."""

    def __init__(self, generation: int) -> None:
        self.generation = generation  # the server start it belongs to: a restart retires it
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.open = transport, True  # type: ignore[assignment]

    def connection_lost(self, error: Exception | None) -> None:
        self.open = False
        self._fail(error or ConnectionResetError("the model server closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(http.client.HTTPException(f"bad response from the model server: {error}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    def send(self, request: bytes) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
        """The response to `request`: (status, lower-cased headers, body)."""
        assert self.transport is not None
        self.headers, self.body = {}, []
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


def http_request(body: bytes, headers: dict[str, str]) -> bytes:
    """POST /invocations as bytes. Header values come from a parsed HTTP request: no CR or LF in them."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST /invocations HTTP/1.1\r\nHost: localhost\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        + body
    )


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
        self.idle: list[ModelConnection] = []  # keep-alive connections, used on the gateway's event loop only
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
            cold = time.monotonic() - began
            self.cold_starts.append(round(cold, 3))
            return cold

    async def ready(self) -> None:
        """Started, off the event loop, when it is not running. The gateway awaits this before it times
        a request: SageMaker's ModelLatency never counts provisioning, so a cold start is not latency."""
        if not self.running:
            await asyncio.get_running_loop().run_in_executor(None, self.ensure_started)

    def _ping(self) -> bool:
        try:
            connection = UnixConnection(str(self.socket), timeout=2)
            connection.request("GET", "/ping")
            ok = connection.getresponse().status == 200
            connection.close()
            return ok
        except OSError:
            return False

    async def _connect(self) -> ModelConnection:
        while self.idle:
            connection = self.idle.pop()
            if connection.open and connection.generation == self.starts:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        generation = self.starts
        _, connection = await loop.create_unix_connection(lambda: ModelConnection(generation), str(self.socket))
        return connection

    async def forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST /invocations: (status, lower-cased headers, body). The server is started off the event loop
        when it is not running; on a broken connection the request is retried once on a new one, after
        `ensure_started` restarted the server if it died (a stale keep-alive connection needs no restart).

        A caller never clears `self.process` itself: another may already have started the
        replacement, which would then be orphaned."""
        loop = asyncio.get_running_loop()
        request = http_request(body, headers)
        for attempt in (1, 2):
            if attempt == 2 or self.process is None:
                await loop.run_in_executor(None, self.ensure_started)
            connection: ModelConnection | None = None
            try:
                connection = await self._connect()
                answer = await connection.send(request)
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                if attempt == 2:
                    raise
                continue
            if connection.open:
                self.idle.append(connection)
            return answer
        raise AssertionError("unreachable")

    def _stop_process(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # idle (no request in flight): the graceful stop closes the gateway's idle keep-alive
            # connections at once (~0.6 s); uvicorn's workers do not stop on gunicorn's SIGQUIT
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
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
