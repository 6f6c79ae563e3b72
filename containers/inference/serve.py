"""Model server speaking the SageMaker inference contract: GET /ping, POST /invocations.

A WSGI app run by gunicorn (pre-forked workers, model loaded once in the master and shared
copy-on-write). Entry point of the custom image (see Dockerfile: `serve`), and the process a
local endpoint starts on its first request. Bad input is a 4xx with a message; the server
never dies on input. Imports nothing from `pipelines/`.

    python serve.py [--model-dir /opt/ml/model] [--bind 0.0.0.0:8080] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import inference  # this folder is the code directory, not a package

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_model: inference.Model | None = None


def load(model_dir: str) -> inference.Model:
    global _model
    _model = inference.model_fn(model_dir)
    return _model


def _answer(
    start_response: StartResponse, status: int, body: bytes, content_type: str, extra: dict[str, str]
) -> list[bytes]:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
               413: "Payload Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error"}  # fmt: skip
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra.items()]
    start_response(f"{status} {reasons.get(status, 'Error')}", headers)
    return [body]


def _error(start_response: StartResponse, status: int, message: str) -> list[bytes]:
    return _answer(start_response, status, json.dumps({"error": message}).encode(), "application/json", {})


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise inference.RequestError("bad Content-Length") from None
    if length > inference.MAX_BODY_BYTES:
        raise inference.RequestError(
            f"request body of {length} bytes exceeds the {inference.MAX_BODY_BYTES}-byte limit", 413
        )
    return environ["wsgi.input"].read(length) if length else b""


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
    if path == "/ping":
        status = 200 if _model is not None else 500
        return _answer(start_response, status, b"", "text/plain", {})
    if path != "/invocations":
        return _error(start_response, 404, f"no route {path}: use GET /ping or POST /invocations")
    if method != "POST":
        return _error(start_response, 405, "POST /invocations")
    try:
        body = _read_body(environ)
        rows = inference.input_fn(body, environ.get("CONTENT_TYPE", ""), _model)
        attributes = environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES", "")
        prediction = inference.predict_fn(rows, _model, inference.wants_probabilities(attributes))
        payload, content_type = inference.output_fn(prediction, environ.get("HTTP_ACCEPT", ""))
    except inference.RequestError as error:
        return _error(start_response, error.status, str(error))
    except Exception as error:  # a model failure is the server's 500, never a crash
        return _error(start_response, 500, f"prediction failed: {type(error).__name__}: {error}")
    return _answer(start_response, 200, payload, content_type, {})


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
                "worker_class": "gthread",
                "threads": 2,
                "timeout": args.timeout,
                "keepalive": 75,
                "graceful_timeout": 10,
                "preload_app": True,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[..., Iterable[bytes]]:
            return application

    Server().run()


if __name__ == "__main__":
    main()
