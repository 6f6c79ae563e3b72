"""Deployment gate evaluator: read a model version's evaluation and decide how (or whether) to deploy it.

Runs as the state machine's EvaluateModel task, on AWS and in local mode (the same handler,
called by the local Step Functions interpreter). It fails closed: anything it cannot read or
check is a `reject` with a reason; malformed execution input raises GateInputError, which
fails the execution before anything is deployed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any
from urllib.parse import urlparse

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

from pipelines.contract import GateInput, deployment_target, library_mismatches

SERVICE = "sagegate-gate"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="sagegate", service=SERVICE)
tracer = Tracer(service=SERVICE)

FLOAT_SLACK = 1e-9  # 0.97 - 0.96 > 0.01 in binary floating point; a tie is not worse


class GateInputError(Exception):
    """The execution input is not a gate request: the execution fails, nothing is deployed."""


class RegistryError(Exception):
    """The model registry could not be read: the gate rejects (it never assumes "no champion")."""


class GateEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: GateInput
    execution_name: str = Field(min_length=1)


def _input_error(error: ValidationError) -> GateInputError:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(input)"
        problems.append(f"{field}: {item['msg']} (got {item.get('input')!r:.80})")
    return GateInputError("bad gate input: " + "; ".join(problems))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@tracer.capture_method
def read_report(uri: str) -> dict[str, Any]:
    parsed = urlparse(uri)
    body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    report = json.loads(body)
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ValueError("no 'metrics' section")
    return report


def _registry() -> Any:
    """The MLflow client of the function's MLFLOW_TRACKING_URI; never a store in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RegistryError("MLFLOW_TRACKING_URI is not set for this function: no model registry to read")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    try:
        return mlflow.MlflowClient(tracking_uri=uri)
    except Exception as error:  # the store cannot be opened
        raise RegistryError(f"{type(error).__name__}: {error}") from None


@tracer.capture_method
def read_registry(gate: GateInput) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The challenger's recorded library versions (`library.*` tags) and the version currently serving
    (MLflow alias `champion`) with its recorded metrics, or None when no version carries the alias.
    An unregistered version is bad input; any other registry failure is a RegistryError, which the
    gate turns into a rejection."""
    from mlflow.exceptions import MlflowException

    client = _registry()
    try:
        challenger = client.get_model_version(gate.registered_model, gate.version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise GateInputError(f"unknown model version: {gate.registered_model} version {gate.version}") from None
        raise RegistryError(f"{type(error).__name__}: {error}") from None
    except Exception as error:  # an unreachable or broken store: fail closed
        raise RegistryError(f"{type(error).__name__}: {error}") from None
    libraries = {k.removeprefix("library."): v for k, v in (challenger.tags or {}).items() if k.startswith("library.")}
    try:
        aliases = client.get_registered_model(gate.registered_model).aliases or {}
        if "champion" not in aliases:
            return libraries, None
        champion = client.get_model_version(gate.registered_model, str(aliases["champion"]))
        tags = champion.tags or {}
        recorded = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    except Exception as error:
        raise RegistryError(f"{type(error).__name__}: {error}") from None
    return libraries, {"version": str(champion.version), "metrics": recorded}


def check_libraries(gate: GateInput, trained_with: dict[str, str]) -> list[str]:
    """A model is deployed only onto the library versions it was trained with (fail closed)."""
    return library_mismatches(f"{gate.registered_model} version {gate.version}", trained_with, gate.runtime_libraries)


def check_thresholds(gate: GateInput, report: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    values: dict[str, float] = {}
    reasons: list[str] = []
    if not gate.quality_gate:
        reasons.append("no quality-gate thresholds given: nothing to check, so nothing is deployed")
    for metric, threshold in sorted(gate.quality_gate.items()):
        bounds = {"min": threshold.min, "max": threshold.max}
        if all(bound is None for bound in bounds.values()):
            reasons.append(f"{metric}: threshold has neither min nor max")
            continue
        if any(bound is not None and not math.isfinite(bound) for bound in bounds.values()):
            reasons.append(f"{metric}: threshold is not a finite number")
            continue
        entry = report["metrics"].get(metric)
        value = _number(entry.get("value") if isinstance(entry, dict) else entry)
        if value is None:
            reasons.append(f"{metric}: missing or not a finite number in the evaluation report (got {entry!r:.60})")
            continue
        values[metric] = value
        if threshold.min is not None and value < threshold.min:
            reasons.append(f"{metric} {value:.4f} is below the minimum {threshold.min}")
        if threshold.max is not None and value > threshold.max:
            reasons.append(f"{metric} {value:.4f} is above the maximum {threshold.max}")
    return values, reasons


def compare_with_champion(
    gate: GateInput, values: dict[str, float], champion: dict[str, Any] | None
) -> tuple[list[str], list[str]]:
    """A challenger worse than the champion by more than the tolerance is rejected.

    Direction follows the threshold: a metric with a minimum is better higher, one with only
    a maximum is better lower.
    """
    if champion is None or champion["version"] == gate.version:
        return [], []
    reasons, notes = [], []
    tolerance = gate.deployment.champion_tolerance
    for metric, value in sorted(values.items()):
        best = champion["metrics"].get(metric)
        if best is None:
            notes.append(f"champion version {champion['version']} has no recorded {metric}; not compared")
            continue
        higher_is_better = gate.quality_gate[metric].min is not None
        shortfall = best - value if higher_is_better else value - best
        if shortfall > tolerance + FLOAT_SLACK:
            reasons.append(
                f"{metric} {value:.4f} is worse than champion version {champion['version']}'s {best:.4f} "
                f"by {shortfall:.4f} (tolerance {tolerance})"
            )
    return reasons, notes


def _digest(gate: GateInput, execution_name: str) -> str:
    """New model and config names per execution and content; the endpoint keeps its name."""
    identity = json.dumps(
        [execution_name, gate.registered_model, gate.version, gate.container, gate.deployment.model_dump()],
        sort_keys=True,
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


def evaluate(gate: GateInput, execution_name: str) -> dict[str, Any]:
    reasons: list[str] = []
    values: dict[str, float] = {}
    try:
        report = read_report(gate.evaluation_uri)
    except Exception as error:  # any unreadable report is a reject, never a crash
        reasons.append(f"evaluation report {gate.evaluation_uri} is unreadable: {type(error).__name__}: {error}")
        report = None
    if report is not None:
        values, threshold_reasons = check_thresholds(gate, report)
        reasons += threshold_reasons
    try:
        trained_with, champion = read_registry(gate)
        reasons += check_libraries(gate, trained_with)
    except RegistryError as error:
        champion = None
        reasons.append(f"cannot read the champion of {gate.registered_model} from the model registry: {error}")
    champion_reasons, notes = compare_with_champion(gate, values, champion) if not reasons else ([], [])
    reasons += champion_reasons
    decision = "reject" if reasons else f"deploy_{gate.deployment.type}"
    if decision == "reject":
        summary = "; ".join(reasons)
    else:
        summary = f"{gate.registered_model} version {gate.version} passed every threshold"
        if champion and champion["version"] != gate.version:
            summary += f" and is not worse than champion version {champion['version']}"
    return {
        "decision": decision,
        "reason": summary,
        "reasons": reasons or [summary],
        "notes": notes,
        "metrics": values,
        "champion": champion,
        "target": _target(gate, execution_name) if decision != "reject" else None,
    }


def _target(gate: GateInput, execution_name: str) -> dict[str, Any]:
    try:
        return deployment_target(gate.resources, gate.deployment.type, _digest(gate, execution_name))
    except ValueError as error:
        raise GateInputError(str(error)) from None


@logger.inject_lambda_context(correlation_id_path="execution_name", clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        try:
            request = parse(event=event, model=GateEvent)
        except ValidationError as error:
            raise _input_error(error) from None
        result = evaluate(request.gate, request.execution_name)
    except GateInputError:
        # the execution fails (nothing is deployed); the count is what an alarm on bad requests watches
        metrics.add_metric(name="GateInputErrors", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_dimension(name="decision", value=result["decision"])
    metrics.add_metric(name="GateDecisions", unit=MetricUnit.Count, value=1)
    logger.info(
        "gate decision",
        extra={"model": request.gate.registered_model, "version": request.gate.version, **result},
    )
    return result
