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
from typing import Any, Literal
from urllib.parse import urlparse

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

SERVICE = "sagegate-gate"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace="sagegate", service=SERVICE)
tracer = Tracer(service=SERVICE)

DEPLOYMENT_TYPES = ("realtime", "serverless")
NAME_LIMIT = 63  # SageMaker model, endpoint and endpoint-config names
FLOAT_SLACK = 1e-9  # 0.97 - 0.96 > 0.01 in binary floating point; a tie is not worse


class GateInputError(Exception):
    """The execution input is not a gate request: the execution fails, nothing is deployed."""


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float | None = None
    max: float | None = None


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    instance_type: str = "ml.m5.large"
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(1, ge=1)
    memory_size_mb: int = Field(2048, ge=1024, le=6144)
    max_concurrency: int = Field(5, ge=1, le=200)
    champion_tolerance: float = Field(0.0, ge=0.0)
    scale_in_cooldown: int = Field(300, ge=0)
    scale_out_cooldown: int = Field(60, ge=0)
    target_invocations_per_instance: float = Field(1.0, gt=0)


class GateInput(BaseModel):
    """The execution input: one registered model version and the settings from its model YAML."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    task: Literal["classification", "regression"]
    registered_model: str = Field(min_length=1)
    version: str = Field(pattern=r"^[1-9][0-9]*$")
    model_package_arn: str | None = None
    evaluation_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    container: dict[str, Any]
    quality_gate: dict[str, Threshold]
    deployment: Deployment
    poll_seconds: int = Field(ge=0, le=3600)


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
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow.MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))  # the function's setting


@tracer.capture_method
def champion_of(gate: GateInput) -> dict[str, Any] | None:
    """The version currently serving (MLflow alias `champion`) and its recorded metrics."""
    from mlflow.exceptions import MlflowException

    client = _registry()
    try:
        client.get_model_version(gate.registered_model, gate.version)
    except MlflowException as error:
        raise GateInputError(f"unknown model version: {gate.registered_model} version {gate.version}") from error
    try:
        champion = client.get_model_version_by_alias(gate.registered_model, "champion")
    except MlflowException:
        return None
    tags = champion.tags or {}
    return {
        "version": str(champion.version),
        "metrics": {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")},
    }


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


def deployment_target(gate: GateInput, execution_name: str) -> dict[str, Any]:
    """Names for this deployment: new model and config per execution, the endpoint keeps its name."""
    project = os.environ["SAGEGATE_PROJECT"]
    environment = os.environ["SAGEGATE_ENVIRONMENT"]
    base = f"{project}-{environment}-{gate.model}"
    identity = json.dumps(
        [execution_name, gate.registered_model, gate.version, gate.container, gate.deployment.model_dump()],
        sort_keys=True,
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    target = {
        "deployment_type": gate.deployment.type,
        "endpoint_name": f"{base}-{gate.deployment.type}",
        "model_name": f"{base}-{digest}",
        "endpoint_config_name": f"{base}-config-{digest}",
        "inference_component_name": f"{base}-component",
        "scalable_resource_id": f"inference-component/{base}-component",
        "scaling_policy_prefix": f"{base}-component",
    }
    too_long = [name for key, name in target.items() if key.endswith("_name") and len(name) > NAME_LIMIT]
    if too_long:
        raise GateInputError(f"resource names longer than {NAME_LIMIT} characters: {', '.join(too_long)}")
    return target


def evaluate(gate: GateInput, execution_name: str) -> dict[str, Any]:
    reasons: list[str] = []
    values: dict[str, float] = {}
    if gate.deployment.type not in DEPLOYMENT_TYPES:
        reasons.append(
            f"unknown deployment target {gate.deployment.type!r} (expected one of {', '.join(DEPLOYMENT_TYPES)})"
        )
    try:
        report = read_report(gate.evaluation_uri)
    except Exception as error:  # any unreadable report is a reject, never a crash
        reasons.append(f"evaluation report {gate.evaluation_uri} is unreadable: {type(error).__name__}: {error}")
        report = None
    if report is not None:
        values, threshold_reasons = check_thresholds(gate, report)
        reasons += threshold_reasons
    champion = champion_of(gate)
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
        "target": deployment_target(gate, execution_name) if decision != "reject" else None,
    }


@logger.inject_lambda_context(correlation_id_path="execution_name", clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=GateEvent)
    except ValidationError as error:
        raise _input_error(error) from None
    result = evaluate(request.gate, request.execution_name)
    metrics.add_dimension(name="decision", value=result["decision"])
    metrics.add_metric(name="GateDecisions", unit=MetricUnit.Count, value=1)
    logger.info(
        "gate decision",
        extra={"model": request.gate.registered_model, "version": request.gate.version, **result},
    )
    return result
