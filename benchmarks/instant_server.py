"""An ASGI app that answers every request at once: the server behind the benchmarks' boto3 floor.

Run by uvicorn (httptools, uvloop) in its own process, as the gateway is, so the floor measures what
boto3 itself costs the user's path, not a slow server's cost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

ANSWER = b'{"predictions": [0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[[dict], Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
