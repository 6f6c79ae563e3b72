"""Shadow tests locally: a sampled copy of production requests goes to the shadow variant, off the
request path, and each pair of answers is kept for `sagegate endpoints shadow-report`.

An endpoint config with `ShadowProductionVariants` (what `provision endpoint` makes from the YAML's
`deployment.shadow`) mirrors each request to the shadow variant with the probability of the shadow's
weight relative to the production variant's, as SageMaker does. The caller gets the production
answer only and never waits for the shadow: the gateway hands the copy to a bounded queue (full:
the copy is dropped and counted) served by two threads. Pairs are JSON lines in
`serving/shadow/{endpoint}.jsonl`, rotated at 8 MB (one previous file kept), so a long test costs
bounded disk.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.local.serving_metrics import quantiles
from pipelines.state import StateHome

QUEUE_LIMIT = 1000
WORKERS = 2
ROTATE_BYTES = 8 * 1024 * 1024
SHADOW_NICE = 19  # the shadow's sender threads and model server run at the lowest CPU priority

Forward = Callable[[str, bytes, dict[str, str]], tuple[int, bytes]]  # (model, body, headers) -> (status, payload)


@dataclass(frozen=True)
class ShadowRoute:
    variant: str
    model: str
    sampling: float  # 0-1: the shadow weight relative to the production variant's


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
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_LIMIT)
        self.dropped: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(WORKERS)]
        for thread in self.threads:
            thread.start()

    def offer(
        self, endpoint: str, production_variant: str, shadow: ShadowRoute, body: bytes, headers: dict[str, str],
        production: tuple[int, bytes, float],
    ) -> None:  # fmt: skip
        """Called on the request thread after the production answer: samples, enqueues, returns."""
        if random.random() >= shadow.sampling:
            return
        try:
            self.queue.put_nowait((endpoint, production_variant, shadow, body, headers, production))
        except queue.Full:
            with self.lock:
                self.dropped[endpoint] = self.dropped.get(endpoint, 0) + 1

    def _work(self) -> None:
        try:  # the copies yield the CPU to callers' requests (Linux: a thread has its own nice value)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        except (AttributeError, OSError):
            pass
        while True:
            item = self.queue.get()
            if item is None:
                return
            endpoint, production_variant, shadow, body, headers, (status, payload, seconds) = item
            started = time.perf_counter()
            try:
                shadow_status, shadow_payload = self.forward(shadow.model, body, headers)
            except Exception as error:  # the shadow's failure is recorded, never the caller's
                shadow_status, shadow_payload = 599, str(error).encode()
            shadow_seconds = time.perf_counter() - started
            pair = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "production": {"variant": production_variant, "status": status, "ms": round(1000 * seconds, 3)},
                "shadow": {"variant": shadow.variant, "status": shadow_status, "ms": round(1000 * shadow_seconds, 3)},
                "agree": status == shadow_status == 200 and _predictions(payload) == _predictions(shadow_payload),
            }
            try:
                self._write(endpoint, pair)
            except OSError:
                logging.getLogger(__name__).exception("shadow pair for %s not written", endpoint)

    def _write(self, endpoint: str, pair: dict[str, Any]) -> None:
        path = pairs_path(self.home, endpoint)
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > ROTATE_BYTES:
                path.replace(path.with_suffix(".jsonl.1"))
            with path.open("a") as stream:
                stream.write(json.dumps(pair) + "\n")

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=10)


def _predictions(payload: bytes) -> Any:
    """What two answers must share to agree: their predictions (labels, or values rounded to 1e-6)."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return payload
    predictions = answer.get("predictions", answer) if isinstance(answer, dict) else answer
    if isinstance(predictions, list):
        return [round(p, 6) if isinstance(p, float) else p for p in predictions]
    return predictions


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
    return {
        "endpoint": endpoint,
        "pairs": len(pairs),
        "production_variant": pairs[-1]["production"]["variant"],
        "shadow_variant": pairs[-1]["shadow"]["variant"],
        "agreement": round(sum(p["agree"] for p in both) / len(both), 4) if both else None,
        "shadow_errors": sum(p["shadow"]["status"] != 200 for p in pairs),
        "production_errors": sum(p["production"]["status"] != 200 for p in pairs),
        "production_ms": _percentiles([p["production"]["ms"] for p in pairs]),
        "shadow_ms": _percentiles([p["shadow"]["ms"] for p in pairs]),
        "from": pairs[0]["time"],
        "to": pairs[-1]["time"],
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = quantiles(sorted(values))
    return {"p50": p50, "p99": p99}
