"""The gateway's counters: invocations, model errors and model latency (p50/p99 of the last
LATENCY_WINDOW requests) per endpoint and variant, throttles, model-server status.

They live in the gateway process (request threads count under one lock) and are written
atomically to `serving/metrics.json` for `sagegate endpoints`; they survive gateway restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipelines.local.model_server import ModelServer
from pipelines.state import StateHome
from pipelines.statefiles import StateFileError, read_json, write_json

LATENCY_WINDOW = 1000


def metrics_path(home: StateHome) -> Path:
    return home.serving / "metrics.json"


def read_metrics(home: StateHome) -> dict[str, Any]:
    """The last snapshot the gateway wrote ({} before its first); StateFileError names a bad file."""
    path = metrics_path(home)
    if not path.is_file():
        return {}
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise StateFileError(f"{path}: not a serving metrics file")
    return metrics


def version_counts(home: StateHome, model: str) -> dict[str, Any]:
    """One model version's counters (invocations, errors, p50/p99 ms): {} before its first request, or
    when the file cannot be read (to a rollout's alarms, CloudWatch's missing data)."""
    try:
        return read_metrics(home).get("models", {}).get(model, {})
    except StateFileError:
        return {}


def quantiles(ordered: list[float]) -> tuple[float, float]:
    """(p50, p99) of sorted values, by rank: what the gateway's and the shadow report's latencies show."""
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class ServingMetrics:
    def __init__(self, home: StateHome) -> None:
        self.path = metrics_path(home)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.invocations: dict[str, dict[str, int]] = {}
        self.throttled: dict[str, int] = {}
        self.errors: dict[str, dict[str, int]] = {}
        self.latencies: dict[tuple[str, str], deque[float]] = {}
        # per model (a version: rollouts judge the new one on its own traffic)
        self.models: dict[str, dict[str, int]] = {}
        self.model_latencies: dict[str, deque[float]] = {}
        try:
            previous = read_metrics(home)
            self.invocations = dict(previous.get("invocations", {}))
            self.throttled = dict(previous.get("throttled", {}))
            self.errors = dict(previous.get("errors", {}))
            self.models = {model: {"invocations": c["invocations"], "errors": c["errors"]}
                           for model, c in previous.get("models", {}).items()}  # fmt: skip
        except (StateFileError, TypeError, ValueError) as error:
            logging.getLogger(__name__).warning("starting counters from zero: %s", error)

    def count(self, endpoint: str, variant: str, model: str, seconds: float, failed: bool = False) -> None:
        """One invocation the model answered (`failed`: with an error), taking `seconds` (ModelLatency)."""
        with self.lock:
            totals = self.models.setdefault(model, {"invocations": 0, "errors": 0})
            totals["invocations"] += 1
            totals["errors"] += int(failed)
            recent = self.model_latencies.get(model)
            if recent is None:
                recent = self.model_latencies[model] = deque(maxlen=LATENCY_WINDOW)
            recent.append(seconds)
            counts = self.invocations.setdefault(endpoint, {})
            counts[variant] = counts.get(variant, 0) + 1
            if failed:
                errors = self.errors.setdefault(endpoint, {})
                errors[variant] = errors.get(variant, 0) + 1
            window = self.latencies.get((endpoint, variant))
            if window is None:
                window = self.latencies[(endpoint, variant)] = deque(maxlen=LATENCY_WINDOW)
            window.append(seconds)

    def throttle(self, endpoint: str) -> None:
        with self.lock:
            self.throttled[endpoint] = self.throttled.get(endpoint, 0) + 1

    def write(self, servers: Iterable[ModelServer]) -> None:
        with self.lock:  # a consistent copy: request threads keep counting meanwhile
            invocations = {endpoint: dict(counts) for endpoint, counts in self.invocations.items()}
            throttled = dict(self.throttled)
            errors = {endpoint: dict(counts) for endpoint, counts in self.errors.items()}
            windows = {key: sorted(window) for key, window in self.latencies.items()}
            models = {model: {**totals, **_percentiles(sorted(self.model_latencies.get(model, ())))}
                      for model, totals in self.models.items()}  # fmt: skip
        latency: dict[str, dict[str, dict[str, float]]] = {}
        for (endpoint, variant), window in windows.items():
            latency.setdefault(endpoint, {})[variant] = _percentiles(window)
        now = time.monotonic()
        snapshot = {
            "updated": time.time(),
            "pid": os.getpid(),
            "invocations": invocations,
            "throttled": throttled,
            "errors": errors,
            "latency": latency,  # of the requests since the gateway started
            "models": models,
            "servers": {
                server.model_name: {
                    "running": server.running,
                    "pid": server.process.pid if server.running and server.process else None,
                    "workers": server.workers,
                    "starts": server.starts,
                    "cold_starts_seconds": server.cold_starts[-10:],
                    "idle_seconds": round(now - server.last_used, 1),
                }
                for server in servers
            },
        }
        write_json(self.path, snapshot)


def _percentiles(window: list[float]) -> dict[str, float]:
    """p50/p99 in milliseconds of sorted latencies in seconds (empty: none)."""
    if not window:
        return {}
    p50, p99 = quantiles(window)
    return {"p50_ms": round(1000 * p50, 2), "p99_ms": round(1000 * p99, 2), "samples": len(window)}
