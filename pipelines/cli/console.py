"""`sagegate console`: the web console over this state folder, on 127.0.0.1."""

from __future__ import annotations

import argparse

from pipelines.cli.common import EXIT_OK, AddParser, add_names, project
from pipelines.state import StateHome


def register(add: AddParser) -> None:
    console = add("console", help="a web console over the local state (127.0.0.1 only)")
    console.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    console.add_argument("--mlflow-url", default="http://127.0.0.1:5000", help="where `sagegate mlflow ui` listens")
    add_names(console)
    console.set_defaults(handler=console_command)


def console_command(args: argparse.Namespace) -> int:
    """Serves until interrupted. The printed URL carries the local token once: opening it enables the
    console's two actions (start a run, re-run the gate) for that browser."""
    import socket

    import uvicorn

    from pipelines.console.app import build_app
    from pipelines.local.api_token import local_token

    home = StateHome.from_env().ensure()
    listener = socket.socket()
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)  # listening before the URL is printed: a client that reads it never meets a refusal
    port = listener.getsockname()[1]
    app = build_app(home, project(args), args.mlflow_url)
    print(f"sagegate console on {home.root}: http://127.0.0.1:{port}/?token={local_token(home)}", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False)
    uvicorn.Server(config).run(sockets=[listener])
    return EXIT_OK
