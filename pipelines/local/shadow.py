"""Shadow tests locally: a sampled copy of production requests goes to the shadow variant, off the
request path, and each pair of answers is kept for `sagegate endpoints shadow-report`.

An endpoint config with `ShadowProductionVariants` (what `provision endpoint` makes from the YAML's
`deployment.shadow`) mirrors each request to the shadow variant with the probability of the shadow's
weight relative to the production variant's, as SageMaker does. The caller gets the production
answer only and never waits for the shadow: the request thread samples and enqueues (a full queue
drops the copy and counts it). On AWS the shadow has its own instances; here it shares the caller's
cores, so one sender thread wakes every LINGER_SECONDS and sends the copies queued meanwhile to the
shadow's model server as one request (rows of CSV or JSON joined in order, the answer split back by each
copy's production row count): a copy then costs the shadow microseconds instead of a request. The
batch's first copy goes alone, as a latency probe: the report's shadow latency is that of single
requests, like production's. A batch the shadow refuses (or answers with the wrong row count) is
halved until each error is the copy's own. Pairs are JSON lines in
`serving/shadow/{endpoint}.jsonl`, rotated at 8 MB (one previous file kept): bounded disk.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.local.serving_metrics import quantiles
from pipelines.state import StateHome

QUEUE_LIMIT = 10_000
LINGER_SECONDS = 0.05
BATCH_COPIES = 500
BATCH_BYTES = 1024 * 1024  # well under the 6 MB payload limit
ROTATE_BYTES = 8 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"

Forward = Callable[[str, bytes, dict[str, str]], tuple[int, bytes]]  # (model, body, headers) -> (status, payload)


@dataclass(frozen=True)
class ShadowRoute:
    variant: str
    model: str
    sampling: float  # 0-1: the shadow weight relative to the production variant's


class Copy(NamedTuple):  # made on the request thread: a tuple is the cheapest record
    endpoint: str
    production_variant: str
    shadow: ShadowRoute
    body: bytes
    headers: dict[str, str]
    status: int  # production's answer
    payload: bytes
    seconds: float


def shadow_route(endpoint_config: dict[str, Any], production_weight: float) -> ShadowRoute | None:
    shadows = endpoint_config.get("ShadowProductionVariants") or []
    if not shadows or not shadows[0].get("ModelName"):
        return None
    shadow = shadows[0]
    sampling = float(shadow.get("InitialVariantWeight", 1.0)) / (production_weight or 1.0)
    return ShadowRoute(shadow["VariantName"], shadow["ModelName"], min(1.0, sampling))


def pairs_path(home: StateHome, endpoint: str) -> Path:
    return home.serving / "shadow" / f"{endpoint}.jsonl"


class ShadowRunner:
    def __init__(self, home: StateHome, forward: Forward) -> None:
        self.home, self.forward = home, forward
        self.queue: queue.Queue[Copy] = queue.Queue(QUEUE_LIMIT)
        self._stop = threading.Event()
        self.dropped: dict[str, int] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, daemon=True, name="shadow")
        self.thread.start()

    def offer(
        self, endpoint: str, production_variant: str, shadow: ShadowRoute, body: bytes, headers: dict[str, str],
        production: tuple[int, bytes, float],
    ) -> None:  # fmt: skip
        """Called on the request thread after the production answer: samples, enqueues, returns."""
        if random.random() >= shadow.sampling:
            return
        try:
            self.queue.put_nowait(Copy(endpoint, production_variant, shadow, body, headers, *production))
        except queue.Full:
            with self.lock:
                self.dropped[endpoint] = self.dropped.get(endpoint, 0) + 1

    def _work(self) -> None:
        """Wakes every LINGER_SECONDS and sends what was queued meanwhile: a request thread's `put` wakes
        no one (waiting on the queue instead woke this thread for every copy)."""
        while True:
            stopping = self._stop.wait(LINGER_SECONDS)
            batch: list[Copy] = []
            size = 0
            while True:
                try:
                    copy = self.queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(copy)
                size += len(copy.body)
                if len(batch) >= BATCH_COPIES or size >= BATCH_BYTES:
                    self._send_safely(batch)
                    batch, size = [], 0
            if batch:
                self._send_safely(batch)
            if stopping:
                return

    def _send_safely(self, batch: list[Copy]) -> None:
        try:
            self._send(batch)
        except Exception:  # one bad batch never stops the shadow test
            logging.getLogger(__name__).exception("shadow batch of %d copies failed", len(batch))

    def _send(self, batch: list[Copy]) -> None:
        pairs: dict[str, list[dict[str, Any]]] = {}
        probe, rest = batch[0], batch[1:]
        pairs.setdefault(probe.endpoint, []).append(self._alone(probe))
        groups: dict[tuple[Any, ...], list[Copy]] = {}
        for copy in rest:
            groups.setdefault((copy.shadow.model, *sorted(copy.headers.items())), []).append(copy)
        for copies in groups.values():
            for copy, pair in zip(copies, self._together(copies), strict=True):
                pairs.setdefault(copy.endpoint, []).append(pair)
        for endpoint, lines in pairs.items():
            try:
                self._write(endpoint, lines)
            except OSError:
                logging.getLogger(__name__).exception("shadow pairs for %s not written", endpoint)

    def _call(self, model: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        try:
            status, payload = self.forward(model, body, headers)
        except Exception as error:  # the shadow's failure is recorded, never the caller's
            status, payload = 599, str(error).encode()
        return status, payload, time.perf_counter() - started

    def _alone(self, copy: Copy) -> dict[str, Any]:
        status, payload, seconds = self._call(copy.shadow.model, copy.body, copy.headers)
        media = _media(copy.headers.get("Accept", ""))
        agree = status == copy.status == 200 and _rows(copy.payload, media) == _rows(payload, media)
        return _pair(copy, status, round(1000 * seconds, 3), agree)

    def _together(self, copies: list[Copy]) -> list[dict[str, Any]]:
        """The copies whose production answered go as one request (their rows joined in order), the rest
        alone. Copies that cannot be joined (JSON records beside arrays), or a joined request the shadow
        refuses or answers with other row counts, are halved until each part joins or each error is the
        copy's own: k bad copies among n cost about k·log2(n) extra requests."""
        media = _media(copies[0].headers.get("Accept", ""))
        rows = {id(c): _rows(c.payload, media) for c in copies if c.status == 200}
        joinable = [c for c in copies if rows.get(id(c)) is not None]
        found = {id(c): pair for c, pair in zip(joinable, self._joined(joinable, rows, media), strict=True)}
        return [found[id(copy)] if id(copy) in found else self._alone(copy) for copy in copies]

    def _joined(self, copies: list[Copy], rows: dict[int, list[Any] | None], media: str) -> list[dict[str, Any]]:
        if len(copies) < 2:
            return [self._alone(copy) for copy in copies]
        joined = _join(copies[0].headers.get("Content-Type", ""), [c.body for c in copies])
        status, payload = (self._call(copies[0].shadow.model, joined, copies[0].headers)[:2]) if joined else (0, b"")
        shadow_rows = _rows(payload, media) if status == 200 else None
        counts = [len(rows[id(c)] or []) for c in copies]
        if shadow_rows is None or len(shadow_rows) != sum(counts):  # refused, or not joinable (mixed forms)
            half = len(copies) // 2
            return self._joined(copies[:half], rows, media) + self._joined(copies[half:], rows, media)
        pairs, offset = [], 0
        for copy, count in zip(copies, counts, strict=True):
            agree = rows[id(copy)] == shadow_rows[offset : offset + count]
            pairs.append(_pair(copy, 200, None, agree, batched=len(copies)))
            offset += count
        return pairs

    def _write(self, endpoint: str, pairs: list[dict[str, Any]]) -> None:
        path = pairs_path(self.home, endpoint)
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > ROTATE_BYTES:
                path.replace(path.with_suffix(".jsonl.1"))
            with path.open("a") as stream:
                stream.write("".join(json.dumps(pair) + "\n" for pair in pairs))

    def close(self) -> None:
        """Sends what is queued, then stops."""
        self._stop.set()
        self.thread.join(timeout=30)


def _pair(copy: Copy, status: int, ms: float | None, agree: bool, batched: int = 1) -> dict[str, Any]:
    """One JSON line: a single shadow request has its latency (`ms`), a batched copy has `batched`."""
    shadow: dict[str, Any] = {"variant": copy.shadow.variant, "status": status, "ms": ms}
    if batched > 1:
        shadow["batched"] = batched
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "production": {"variant": copy.production_variant, "status": copy.status, "ms": round(1000 * copy.seconds, 3)},
        "shadow": shadow,
        "agree": agree,
    }


def _media(value: str) -> str:
    return value.split(";")[0].strip().lower()


def _rows(payload: bytes, media: str) -> list[Any] | None:
    """An answer's predictions, one per row (values rounded to 1e-6), or None if it has none."""
    if media == "text/csv":
        return payload.decode(errors="replace").splitlines()
    try:
        answer = json.loads(payload)
    except ValueError:
        return None
    predictions = answer.get("predictions") if isinstance(answer, dict) else answer
    if not isinstance(predictions, list):
        return None
    return [round(p, 6) if isinstance(p, float) else p for p in predictions]


def _join(content_type: str, bodies: list[bytes]) -> bytes | None:
    """The bodies as one request of all their rows, in order; None where they cannot be joined."""
    media = _media(content_type)
    if media == "text/csv":
        parts = [b.removeprefix(UTF8_BOM).strip(b"\r\n") for b in bodies]
        return b"\n".join(parts) + b"\n"
    if media != "application/json":
        return None
    rows: list[Any] = []
    for body in bodies:
        try:
            data = json.loads(body.removeprefix(UTF8_BOM))
        except ValueError:
            return None
        if isinstance(data, dict):
            data = next((data[key] for key in ("instances", "inputs", "data") if key in data), [data])
        if not isinstance(data, list) or not data:
            return None
        rows += data if isinstance(data[0], list | dict) else [data]  # a flat list is one row
    if len({isinstance(row, dict) for row in rows}) != 1:
        return None
    return json.dumps({"instances": rows}).encode()


def shadow_report(home: StateHome, endpoint: str) -> dict[str, Any]:
    """Agreement rate, latency (p50/p99 of each side) and errors, from the kept pairs."""
    path = pairs_path(home, endpoint)
    lines: list[str] = []
    for part in (path.with_suffix(".jsonl.1"), path):
        if part.is_file():
            lines += part.read_text().splitlines()
    pairs = []
    for line in lines:
        try:
            pairs.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    if not pairs:
        return {"endpoint": endpoint, "pairs": 0}
    both = [p for p in pairs if p["production"]["status"] == 200 and p["shadow"]["status"] == 200]
    probes = [p["shadow"]["ms"] for p in pairs if p["shadow"].get("ms") is not None]
    return {
        "endpoint": endpoint,
        "pairs": len(pairs),
        "production_variant": pairs[-1]["production"]["variant"],
        "shadow_variant": pairs[-1]["shadow"]["variant"],
        "agreement": round(sum(p["agree"] for p in both) / len(both), 4) if both else None,
        "shadow_errors": sum(p["shadow"]["status"] != 200 for p in pairs),
        "production_errors": sum(p["production"]["status"] != 200 for p in pairs),
        "production_ms": _percentiles([p["production"]["ms"] for p in pairs]),
        "shadow_ms": _percentiles(probes),
        "shadow_latency_requests": len(probes),  # the copies sent alone; the rest went batched
        "from": pairs[0]["time"],
        "to": pairs[-1]["time"],
    }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p99 = quantiles(sorted(values))
    return {"p50": p50, "p99": p99}
