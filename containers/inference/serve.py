"""Model server speaking the SageMaker inference contract: GET /ping, POST /invocations.

An ASGI app run by gunicorn with uvicorn workers (pre-forked, model loaded once in the master
and shared copy-on-write). Entry point of the custom image (see Dockerfile: `serve`), and the process a
local endpoint starts on its first request. Bad input is a 4xx with a message; the server
never dies on input. Imports nothing from `pipelines/`.

    python serve.py [--model-dir /opt/ml/model] [--bind 0.0.0.0:8080] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import inference  # this folder is the code directory, not a package

_model: inference.Model | None = None
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def load(model_dir: str) -> inference.Model:
    global _model
    _model = inference.model_fn(model_dir)
    return _model


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, message: str) -> None:
    await _answer(send, status, json.dumps({"error": message}).encode(), "application/json")


async def _read_body(receive: Receive, headers: dict[bytes, bytes]) -> bytes:
    try:
        length = int(headers.get(b"content-length") or 0)
    except ValueError:
        raise inference.RequestError("bad Content-Length") from None
    if length > inference.MAX_BODY_BYTES:
        raise inference.RequestError(
            f"request body of {length} bytes exceeds the {inference.MAX_BODY_BYTES}-byte limit", 413
        )
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > inference.MAX_BODY_BYTES:  # a chunked body has no Content-Length to refuse up front
            raise inference.RequestError(f"request body exceeds the {inference.MAX_BODY_BYTES}-byte limit", 413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI app. A prediction runs on the event loop: it is CPU work, and the server's worker
    processes (one per core) are the parallelism, as with synchronous workers."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if path == "/ping":
        await _answer(send, 200 if _model is not None else 500, b"", "text/plain")
        return
    if path != "/invocations":
        await _error(send, 404, f"no route {path}: use GET /ping or POST /invocations")
        return
    if method != "POST":
        await _error(send, 405, "POST /invocations")
        return
    headers = dict(scope["headers"])
    try:
        body = await _read_body(receive, headers)
        rows = inference.input_fn(body, headers.get(b"content-type", b"").decode("latin-1"), _model)
        attributes = headers.get(b"x-amzn-sagemaker-custom-attributes", b"").decode("latin-1")
        prediction = inference.predict_fn(rows, _model, inference.wants_probabilities(attributes))
        payload, content_type = inference.output_fn(prediction, headers.get(b"accept", b"").decode("latin-1"))
    except inference.RequestError as error:
        await _error(send, error.status, str(error))
        return
    except Exception as error:  # a model failure is the server's 500, never a crash
        await _error(send, 500, f"prediction failed: {type(error).__name__}: {error}")
        return
    await _answer(send, 200, payload, content_type)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"], help="SageMaker runs `IMAGE serve`")
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--bind", default=f"0.0.0.0:{os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080')}")
    parser.add_argument(
        "--workers", type=int, default=int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", os.cpu_count() or 1))
    )
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT", "60")))
    args = parser.parse_args(argv)
    load(args.model_dir)
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": args.bind,
                "workers": args.workers,
                # uvicorn's event loop in each pre-forked worker, with httptools and uvloop: a one-row request
                # costs a third of what gunicorn's threaded worker spent on the same request
                "worker_class": "uvicorn_worker.UvicornWorker",
                "timeout": args.timeout,
                "keepalive": 75,
                "graceful_timeout": 10,
                "preload_app": True,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
            return application

    Server().run()


if __name__ == "__main__":
    main()
