"""The console's web application: server-rendered pages over the state folder (Starlette + Jinja2).

Read-only, except two actions (start a run, re-run the gate on a version), which need the local token
as a cookie (set by the URL `sagegate console` prints, like a notebook server's) and a CSRF token in
the form. Every answer carries a restrictive Content-Security-Policy; requests for any host but
127.0.0.1/localhost are refused (DNS rebinding). A running pipeline's page follows it through a
server-sent event stream of its record.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipelines.config import ConfigError, discovered_configs, find_model_config_path
from pipelines.console import views
from pipelines.execution_view import state_rows
from pipelines.local.api_token import authorized, local_token
from pipelines.local.launch import LaunchError, gate_command, start_gate, start_run
from pipelines.local_gate import execution_name
from pipelines.local_run import RunRecord
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError

COOKIE = "sagegate_token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"  # the monitor's own HTML
STREAM_POLL_SECONDS = 0.3
TERMINAL = ("Succeeded", "Failed", "Stopped")
STATIC = Path(__file__).parent / "static"


def csrf_token(home: StateHome) -> str:
    """Derived from the local token: only a page served to a holder of the token can carry it."""
    return hmac.new(local_token(home).encode(), b"sagegate-console-csrf", hashlib.sha256).hexdigest()


def run_payload(home: StateHome, record: RunRecord) -> dict[str, Any]:
    """What a run's page draws and the event stream re-sends as the run moves."""
    return {
        "attempt": record.attempt or record.run_id,
        "run_id": record.run_id,
        "status": record.status,
        "failure_reason": record.failure_reason,
        "duration_seconds": record.duration_seconds,
        "graph": views.run_graph(record),
        "logs": views.log_tails(home, record),
    }


class Console:
    """The routes, bound to one state folder and project."""

    def __init__(self, home: StateHome, project: Project, mlflow_url: str) -> None:
        self.home, self.project, self.mlflow_url = home, project, mlflow_url
        self.templates = Environment(
            loader=PackageLoader("pipelines.console", "templates"), autoescape=select_autoescape(default=True)
        )

    # ---- plumbing -----------------------------------------------------------------------------------

    def signed_in(self, request: Request) -> bool:
        return authorized(self.home, request.cookies.get(COOKIE))

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        signed_in = self.signed_in(request)
        body = self.templates.get_template(template).render(
            request=request,
            project=self.project,
            mlflow_url=self.mlflow_url,
            signed_in=signed_in,
            csrf=csrf_token(self.home) if signed_in else "",
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def refuse(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status=status, message=message)

    async def checked_post(self, request: Request) -> dict[str, str] | Response:
        """The form of an authorized POST, or the refusal to send."""
        form = {key: str(value) for key, value in (await request.form()).items()}
        if not self.signed_in(request):
            return self.refuse(request, 403, "Actions need the local token: open the URL `sagegate console` printed.")
        if not hmac.compare_digest(form.get("csrf", "").encode(), csrf_token(self.home).encode()):
            return self.refuse(request, 403, "The form's CSRF token is missing or wrong: reload the page and retry.")
        return form

    # ---- pages --------------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        runs, run_problems = views.runs(self.home)
        executions, execution_problems = views.executions(self.home)
        endpoints, endpoint_problems = views.endpoints(self.home, self.project)
        return self.page(
            request, "overview.html", runs=runs[:5], executions=executions[:5], endpoints=endpoints,
            models=[config.name for _, config in discovered_configs()],
            problems=run_problems + execution_problems + endpoint_problems,
        )  # fmt: skip

    async def runs(self, request: Request) -> Response:
        runs, problems = views.runs(self.home)
        models = [config.name for _, config in discovered_configs()]
        return self.page(request, "runs.html", runs=runs, models=models, problems=problems)

    async def run(self, request: Request) -> Response:
        record = views.run(self.home, request.path_params["attempt"])
        return self.page(request, "run.html", record=record, payload=run_payload(self.home, record))

    async def run_events(self, request: Request) -> Response:
        """Server-sent events: the run's payload each time its record changes, until it ends."""
        attempt = request.path_params["attempt"]
        views.run(self.home, attempt)  # a 404 before the stream starts

        async def stream() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                current = views.run(self.home, attempt)
                payload = json.dumps(run_payload(self.home, current))
                if payload != last:
                    last = payload
                    yield f"data: {payload}\n\n"
                if current.status in TERMINAL:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(STREAM_POLL_SECONDS)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def start_run(self, request: Request) -> Response:
        form = await self.checked_post(request)
        if isinstance(form, Response):
            return form
        model = views.checked(form.get("model", ""))
        try:
            attempt = start_run(self.home, self.project, find_model_config_path(model))
        except (ConfigError, LaunchError) as error:
            return self.refuse(request, 400, str(error))
        return RedirectResponse(f"/runs/{attempt}", status_code=303)

    async def executions(self, request: Request) -> Response:
        executions, problems = views.executions(self.home)
        started = request.query_params.get("started")
        return self.page(request, "executions.html", executions=executions, problems=problems,
                         started=views.checked(started) if started else None)  # fmt: skip

    async def execution(self, request: Request) -> Response:
        record = views.execution(self.home, request.path_params["name"])
        return self.page(
            request, "execution.html", record=record, rows=state_rows(record), graph=views.execution_graph(record)
        )

    async def rerun_gate(self, request: Request) -> Response:
        form = await self.checked_post(request)
        if isinstance(form, Response):
            return form
        record = views.execution(self.home, request.path_params["name"])
        model, version = str(record.input.get("model", "")), str(record.input.get("version", ""))
        try:
            config_path = find_model_config_path(model)
        except ConfigError as error:
            return self.refuse(request, 400, str(error))
        name = execution_name(model, version)
        start_gate(self.home, gate_command(self.project, model, config_path, version, name), name)
        return RedirectResponse(f"/executions?{urlencode({'started': name})}", status_code=303)

    async def models(self, request: Request) -> Response:
        rows, problems = views.models(self.home)
        return self.page(request, "models.html", rows=rows, problems=problems)

    async def model(self, request: Request) -> Response:
        row = views.model_version(self.home, request.path_params["name"], request.path_params["version"])
        return self.page(request, "model.html", row=row, plots=views.plots(self.home, row))

    async def model_plot(self, request: Request) -> Response:
        row = views.model_version(self.home, request.path_params["name"], request.path_params["version"])
        with tempfile.TemporaryDirectory(prefix="sagegate-console-") as scratch:
            image = views.plot(self.home, row, request.path_params["file"], Path(scratch)).read_bytes()
        return Response(image, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def endpoints(self, request: Request) -> Response:
        rows, problems = views.endpoints(self.home, self.project)
        return self.page(request, "endpoints.html", rows=rows, problems=problems)

    async def endpoint(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail, problems = views.endpoint(self.home, self.project, name)
        return self.page(request, "endpoint.html", detail=detail, problems=problems,
                         reports=views.reports(self.home, name))  # fmt: skip

    async def report(self, request: Request) -> Response:
        path = views.report_file(self.home, request.path_params["name"], request.path_params["folder"])
        return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})


def _security_headers(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """ASGI middleware: CSP (unless the answer set its own), no sniffing, no framing, no referrer."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    headers.append((b"content-security-policy", CSP.encode()))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    return wrapped


def build_app(home: StateHome, project: Project, mlflow_url: str = "http://127.0.0.1:5000") -> Any:
    console = Console(home, project, mlflow_url)

    async def not_found(request: Request, error: Exception) -> Response:
        return console.refuse(request, 404, str(error))

    async def unreadable(request: Request, error: Exception) -> Response:  # a state file that is not whole
        return console.refuse(request, 500, str(error))

    def signing_in(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        """`?token=` from the printed URL becomes an HttpOnly, SameSite=Strict cookie, then leaves the URL."""

        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            request = Request(scope) if scope["type"] == "http" else None
            token = request.query_params.get("token") if request else None
            if request is None or token is None:
                return await app(scope, receive, send)
            if not authorized(home, token):
                response: Response = console.refuse(request, 403, "That is not this state folder's token.")
            else:
                query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)

        return wrapped

    app = Starlette(
        routes=[
            Route("/", console.overview),
            Route("/runs", console.runs),
            Route("/runs", console.start_run, methods=["POST"]),
            Route("/runs/{attempt}", console.run),
            Route("/runs/{attempt}/events", console.run_events),
            Route("/executions", console.executions),
            Route("/executions/{name}", console.execution),
            Route("/executions/{name}/rerun", console.rerun_gate, methods=["POST"]),
            Route("/models", console.models),
            Route("/models/{name}/{version}", console.model),
            Route("/models/{name}/{version}/plots/{file}", console.model_plot),
            Route("/endpoints", console.endpoints),
            Route("/endpoints/{name}", console.endpoint),
            Route("/endpoints/{name}/reports/{folder}", console.report),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"]),
        ],
        exception_handlers={views.NotFound: not_found, 404: not_found, StateFileError: unreadable},
    )
    return _security_headers(signing_in(app))
