"""Local sagemaker-runtime: `POST /endpoints/{name}/invocations` for the local endpoints.

An unmodified `boto3.client("sagemaker-runtime", endpoint_url=...)` or the SDK's Predictor
talks to it. This module is the ASGI app and its lifecycle (`start_gateway`, `stop_gateway`);
it composes `routing` (which model serves a request), `model_server` (one supervised server
process per model, started on first request and stopped after the endpoint's scale-in
cooldown: realtime endpoints scale to zero for real) and `serving_metrics` (the counters
`sagegate endpoints` shows). Serverless endpoints enforce `MaxConcurrency` with AWS's
throttling error; errors use sagemaker-runtime's codes (ValidationError, ModelError,
ThrottlingException).

Run by gunicorn as one uvicorn worker (`sagegate gateway start`): servers and in-flight counts
live in that process. Invocations are forwarded on its event loop (a request's own work is
microseconds: routing, counters, the hop); what blocks (a model server's cold start, the
SageMaker/Step Functions APIs) runs on the loop's thread pool.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pipelines.local.aws_api import LocalApis
from pipelines.local.capture import CaptureWriter, spool_folder
from pipelines.local.endpoints import EndpointManager
from pipelines.local.model_server import ModelServer, ModelServerError, reap_orphans
from pipelines.local.routing import DEFAULT_SCALE_IN_COOLDOWN, InvocationError, route
from pipelines.local.serving_metrics import ServingMetrics
from pipelines.local.shadow import ShadowRunner
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError, locked, process_alive, process_token, read_json, write_json

MAX_PAYLOAD = 6 * 1024 * 1024
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Gateway:
    """The ASGI app: routing, concurrency limits, scale-to-zero and counters."""

    def __init__(self, home: StateHome, project: Project) -> None:
        self.home = home
        self.project = project
        self.manager = EndpointManager(home, project)
        self.apis = LocalApis(home, project)
        self.servers: dict[str, ModelServer] = {}
        self.servers_lock = threading.Lock()
        self.limits: dict[str, tuple[int, threading.BoundedSemaphore]] = {}
        self.metrics = ServingMetrics(home)
        for pid in reap_orphans(home.serving / "models"):
            logging.getLogger(__name__).warning("stopped model server %s left by a gateway that was killed", pid)
        self._capture: CaptureWriter | None = None
        self._shadow: ShadowRunner | None = None
        if any(spool_folder(home).rglob("*.jsonl*")):  # captures a killed gateway left: deliver them now
            self.capture_writer()
        self._state: dict[str, Any] = {}
        self._state_mtime = 0.0
        self._state_path = str(self.manager.path)
        self.loop: asyncio.AbstractEventLoop | None = None  # the worker's event loop, set by the first request
        self._stop = threading.Event()
        threading.Thread(target=self._housekeeping, daemon=True, name="scale-in").start()

    def state(self) -> dict[str, Any]:
        """The endpoint records, re-read only when the file changed."""
        try:
            mtime = os.stat(self._state_path).st_mtime
        except FileNotFoundError:
            return {"endpoints": {}, "endpoint_configs": {}, "models": {}, "inference_components": {}}
        if mtime != self._state_mtime:
            self._state, self._state_mtime = self.manager.snapshot(), mtime
        return self._state

    def shadow_runner(self) -> ShadowRunner:
        """The shadow-test sender, started with the first request to an endpoint with a shadow variant."""
        with self.servers_lock:
            if self._shadow is None:
                self._shadow = ShadowRunner(self.home, self._forward_to_shadow)
            return self._shadow

    def _forward_to_shadow(self, model_name: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        current = self.servers.get(model_name)
        cooldown = current.cooldown if current else DEFAULT_SCALE_IN_COOLDOWN
        server = self._server(model_name, 1, cooldown)
        assert self.loop is not None  # the shadow runner starts with a request, after the loop is known
        server.enter()
        try:
            status, _, payload = asyncio.run_coroutine_threadsafe(server.forward(body, headers), self.loop).result()
        finally:
            server.leave()
        return status, payload

    def capture_writer(self) -> CaptureWriter:
        """The data-capture writer, started with the first endpoint that captures."""
        with self.servers_lock:
            if self._capture is None:
                self._capture = CaptureWriter(self.home, self.project.region)
            return self._capture

    def _server(self, model_name: str, workers: int, cooldown: float) -> ModelServer:
        with self.servers_lock:
            server = self.servers.get(model_name)
            if server is None:
                server = self.servers[model_name] = ModelServer(
                    self.home.serving / "models" / model_name,
                    model_name,
                    self.manager.model_archive(model_name),
                    workers,
                    cooldown,
                )
            server.cooldown = cooldown
            return server

    def _concurrency_slot(self, endpoint_name: str, size: int) -> threading.BoundedSemaphore:
        """A serverless endpoint's MaxConcurrency slot, or ThrottlingException as AWS answers."""
        with self.servers_lock:
            current, limit = self.limits.get(endpoint_name, (0, None))
            if limit is None or current != size:  # new endpoint, or its config changed
                limit = threading.BoundedSemaphore(size)
                self.limits[endpoint_name] = (size, limit)
        if not limit.acquire(blocking=False):
            self.metrics.throttle(endpoint_name)
            raise InvocationError(
                400, "ThrottlingException",
                f"Maximum concurrency ({size}) reached for endpoint {endpoint_name}; retry later.",
            )  # fmt: skip
        return limit

    async def invoke(
        self, endpoint_name: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        chosen = route(
            self.state(),
            endpoint_name,
            headers.get("x-amzn-sagemaker-target-variant"),
            headers.get("x-amzn-sagemaker-inference-component"),
            self.project.account,
        )
        limit = self._concurrency_slot(endpoint_name, chosen.max_concurrency) if chosen.max_concurrency else None
        server = self._server(chosen.model, chosen.workers, chosen.cooldown)
        server.enter()
        try:
            await server.ready()  # a cold start (recorded as one) is not the model's latency
            started = time.perf_counter()
            forwarded = {
                "Content-Type": headers.get("content-type", "application/json"),
                "Accept": headers.get("accept", "application/json"),
                "X-Amzn-SageMaker-Custom-Attributes": headers.get("x-amzn-sagemaker-custom-attributes", ""),
            }
            status, response_headers, payload = await server.forward(body, forwarded)
        except ModelServerError as error:
            raise InvocationError(424, "ModelError", str(error), OriginalStatusCode=500) from None
        except (OSError, http.client.HTTPException) as error:
            raise InvocationError(424, "ModelError", f"model server failed: {error}", OriginalStatusCode=500) from None
        finally:
            server.leave()
            if limit is not None:
                limit.release()
        self.metrics.count(
            endpoint_name, chosen.variant, chosen.model, time.perf_counter() - started, failed=status != 200
        )
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
        capture = chosen.capture
        if capture is not None:
            response_type = response_headers.get("content-type", "application/json")
            self.capture_writer().offer(
                endpoint_name,
                chosen.variant,
                capture,
                (body, forwarded["Content-Type"]),
                (payload, response_type),
                headers.get("x-amzn-sagemaker-inference-id"),
            )
        if chosen.shadow is not None:
            production = (status, payload, time.perf_counter() - started)
            self.shadow_runner().offer(endpoint_name, chosen.variant, chosen.shadow, body, forwarded, production)
        extra = {"X-Amzn-Invoked-Production-Variant": chosen.variant}
        if headers.get("x-amzn-sagemaker-custom-attributes"):
            extra["X-Amzn-SageMaker-Custom-Attributes"] = headers["x-amzn-sagemaker-custom-attributes"]
        return 200, {"Content-Type": response_headers.get("content-type", "application/json"), **extra}, payload

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            # the model servers stop here: uvicorn's worker re-raises the SIGTERM it stopped on once it
            # has shut down, so the process dies by it and gunicorn's worker_exit hook never runs
            await asyncio.get_running_loop().run_in_executor(None, self.shutdown)
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.loop = asyncio.get_running_loop()
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        target = headers.get("x-amz-target")
        try:
            if target and path == "/" and scope["method"] == "POST":  # SageMaker / Step Functions APIs
                body = await self._body(receive, headers)
                status, answer = await self.loop.run_in_executor(
                    None, self.apis.call, target, body, headers.get("x-amz-security-token")
                )
                response = {"Content-Type": "application/x-amz-json-1.1"}
                if status != 200:
                    response["x-amzn-ErrorType"] = answer["__type"]
                await self._respond(send, status, response, json.dumps(answer).encode())
                return
            if path == "/ping":
                await self._respond(send, 200, {"Content-Type": "application/json"}, b"{}")
                return
            parts = path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "endpoints" or parts[2] not in ("invocations",):
                raise InvocationError(404, "UnknownOperationException", f"no such operation: {path}")
            body = await self._body(receive, headers)
            status, response_headers, payload = await self.invoke(unquote(parts[1]), body, headers)
            await self._respond(send, status, response_headers, payload)
        except InvocationError as error:
            payload = json.dumps({"message": error.message, **error.fields}).encode()
            response = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}
            await self._respond(send, error.status, response, payload)

    @staticmethod
    async def _body(receive: Receive, headers: dict[str, str]) -> bytes:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise InvocationError(400, "ValidationError", "bad Content-Length") from None
        if length > MAX_PAYLOAD:
            raise InvocationError(413, "ValidationError", f"Request body of {length} bytes exceeds 6 MB.")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_PAYLOAD:  # chunked: no Content-Length to refuse up front
                raise InvocationError(413, "ValidationError", "Request body exceeds 6 MB.")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    async def _respond(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def _housekeeping(self) -> None:
        """Scale idle servers to zero and publish the counters, four times a second."""
        while not self._stop.wait(0.25):
            try:
                now = time.monotonic()
                for server in list(self.servers.values()):
                    if server.idle_past_cooldown(now):
                        server.stop()
                self.metrics.write(list(self.servers.values()))
            except Exception:  # keep scaling in and reporting whatever one pass hit
                logging.getLogger(__name__).exception("gateway housekeeping failed")

    def shutdown(self) -> None:
        """Stop every model server at once (each may take its 5 s grace): a gateway serving many models
        stops in seconds, well inside gunicorn's graceful timeout."""
        self._stop.set()
        servers = list(self.servers.values())
        stoppers = [threading.Thread(target=server.stop) for server in servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.metrics.write(servers)
        if self._capture is not None:
            self._capture.close()
        if self._shadow is not None:
            self._shadow.close()


def serve(port: int) -> None:
    """Run the gateway in the foreground: gunicorn, one uvicorn worker process (shared state)."""
    from gunicorn.app.base import BaseApplication

    class GatewayServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "uvicorn_worker.UvicornWorker",
                "timeout": 120,
                "graceful_timeout": 10,  # in-flight invocations finish; idle keep-alive clients do not hold it
                "keepalive": 75,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Gateway:
            return Gateway(StateHome.from_env(), Project.from_env())

    GatewayServer().run()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gateway_file(home: StateHome) -> Path:
    return home.serving / "gateway.json"


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
        if not process_alive(info.get("process") or str(info["pid"])):
            raise ProcessLookupError(info["pid"])
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
    log_path = home.serving / "gateway.log"
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
    info = {
        "pid": process.pid,
        "process": process_token(process.pid),  # a reused pid is not mistaken for the gateway
        "port": port,
        "url": f"http://127.0.0.1:{port}",
    }
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


def runtime_client(home: StateHome, project: Project) -> Any:
    """An unmodified boto3 `sagemaker-runtime` client on this state folder's gateway (started if needed)."""
    import boto3

    info = start_gateway(home, project)
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=info["url"],
        region_name=project.region,
        aws_access_key_id="sagegate-local",
        aws_secret_access_key="sagegate-local",
    )


def stop_gateway(home: StateHome, timeout: float = 20) -> bool:
    """Stop the gateway gracefully (it stops its model servers); past `timeout`, kill its process group
    (the next gateway reaps the servers it leaves). False when none was running."""
    info = running_gateway(home)
    if info is None:
        return False
    token = info.get("process") or str(info["pid"])
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = False
    while process_alive(token):
        if time.monotonic() > deadline:
            if killed:
                raise OSError(f"the gateway (pid {info['pid']}) survived SIGKILL")
            os.killpg(info["pid"], signal.SIGKILL)  # its model servers are reaped by the next gateway
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.05)
    gateway_file(home).unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="local sagemaker-runtime gateway")
    parser.add_argument("--port", type=int, default=8080)
    serve(parser.parse_args().port)
