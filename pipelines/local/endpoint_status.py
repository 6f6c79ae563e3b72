"""What `sagegate endpoints` reports: the control plane's records joined with the gateway's counters."""

from __future__ import annotations

from typing import Any

from pipelines.local.capture import capture_status
from pipelines.local.endpoints import EndpointManager
from pipelines.local.model_server import serving_runtime
from pipelines.local.serving_metrics import read_metrics
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError


def _metrics(home: StateHome, problems: list[str]) -> dict[str, Any]:
    try:
        return read_metrics(home)
    except StateFileError as error:
        problems.append(f"{error} (no invocation counts shown)")
        return {}


def capture_summary(home: StateHome, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """DescribeEndpoint's `DataCaptureConfig` summary, with the gateway's record counts."""
    capture = config.get("DataCaptureConfig")
    if not capture:
        return {}
    enabled = bool(capture.get("EnableCapture", True))
    counts = capture_status(home).get(name, {})
    return {
        "DataCaptureConfig": {
            "EnableCapture": enabled,
            "CaptureStatus": "Started" if enabled else "Stopped",
            "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage", 100),
            "DestinationS3Uri": capture.get("DestinationS3Uri"),
            "Captured": counts.get("captured", 0),
            "Dropped": counts.get("dropped", 0),
            "Delivered": counts.get("delivered", 0),
        }
    }


def endpoint_rows(home: StateHome, project: Project) -> tuple[list[dict[str, Any]], list[str]]:
    """Every local endpoint as `DescribeEndpoint` returns it, with its total `Invocations`."""
    problems: list[str] = []
    manager = EndpointManager(home, project)
    invocations = _metrics(home, problems).get("invocations", {})
    rows = [
        {
            **manager.call("describeEndpoint", {"EndpointName": name}),
            "Invocations": sum(invocations.get(name, {}).values()),
        }
        for name in sorted(manager.snapshot()["endpoints"])
    ]
    return rows, problems


def endpoint_detail(home: StateHome, project: Project, name: str) -> tuple[dict[str, Any], list[str]]:
    """One endpoint: its description, variants with invocation counts, components, model servers."""
    problems: list[str] = []
    manager = EndpointManager(home, project)
    state = manager.snapshot()
    if name not in state["endpoints"]:
        raise ValueError(f"no local endpoint {name!r} (see `sagegate endpoints`)")
    metrics = _metrics(home, problems)
    described = manager.call("describeEndpoint", {"EndpointName": name})
    config = state["endpoint_configs"].get(described["EndpointConfigName"], {})
    variants = config.get("ProductionVariants", [])
    components = {n: c for n, c in state["inference_components"].items() if c["EndpointName"] == name}
    models = {v.get("ModelName") for v in variants} | {
        (c.get("Specification") or {}).get("ModelName") for c in components.values()
    }
    counts = metrics.get("invocations", {}).get(name, {})
    errors = metrics.get("errors", {}).get(name, {})
    latency = metrics.get("latency", {}).get(name, {})

    def runtime(model: str | None) -> dict[str, str]:
        return serving_runtime(manager.model_archive(model)) if model in state["models"] else {}

    detail = {
        **described,
        "ProductionVariants": [
            {
                **v,
                "Invocations": counts.get(v["VariantName"], 0),
                "ModelErrors": errors.get(v["VariantName"], 0),
                "ModelLatency": latency.get(v["VariantName"], {}),
                "Runtime": runtime(v.get("ModelName")),
            }
            for v in variants
        ],
        "InferenceComponents": {
            n: {**c, "Runtime": runtime((c.get("Specification") or {}).get("ModelName"))} for n, c in components.items()
        },
        "Throttled": metrics.get("throttled", {}).get(name, 0),
        **capture_summary(home, name, config),
        "ModelServers": {model: server for model, server in metrics.get("servers", {}).items() if model in models},
    }
    return detail, problems
