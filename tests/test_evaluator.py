"""The evaluator handler on its own: thresholds, champion comparison, fail-closed, fuzzed input."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from pipelines.containers import locked_versions
from pipelines.contract import DIGEST
from pipelines.state import Project
from tests.gate_fixtures import trained_with

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Project()
BUCKET = "sagegate-development-training"
MODEL = "sagegate-development-breast-cancer"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("evaluator_under_test", ROOT / "lambdas" / "evaluator" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load()


class Context:
    function_name = "sagegate-development-gate-evaluator"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sagegate-development-gate-evaluator"
    memory_limit_in_mb = 512
    aws_request_id = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Moto S3 with a report per scenario, and an MLflow registry with versions 1 (champion) and 2."""
    tracking = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    for key, value in {
        "MLFLOW_TRACKING_URI": tracking,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "sagegate",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(key, value)
    patch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = mlflow.MlflowClient(tracking_uri=tracking)
    client.create_registered_model(MODEL)
    for metrics in ({"accuracy": 0.97, "f1": 0.97}, {"accuracy": 0.9, "f1": 0.9}):
        tags = {f"metric.{k}": str(v) for k, v in metrics.items()} | trained_with()
        client.create_model_version(MODEL, source="s3://x/model.tar.gz", tags=tags)
    client.set_registered_model_alias(MODEL, "champion", "1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield
    patch.undo()


def report(body: Any) -> str:
    key = f"evaluation/breast-cancer/{uuid.uuid4().hex}/evaluation.json"
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def resources(deployment_type: str = "serverless") -> dict[str, str]:
    return {
        "endpoint_name": PROJECT.endpoint_name("breast-cancer", deployment_type),
        "model_name": PROJECT.model_name("breast-cancer", DIGEST),
        "endpoint_config_name": PROJECT.endpoint_config_name("breast-cancer", DIGEST),
        "inference_component_name": PROJECT.inference_component_name("breast-cancer"),
        "champion_artifact_uri": PROJECT.champion_artifact_uri("breast-cancer"),
    }


def event(metrics: Any = None, **changes: Any) -> dict[str, Any]:
    gate = {
        "model": "breast-cancer",
        "task": "classification",
        "registered_model": MODEL,
        "version": "2",
        "model_package_arn": None,
        "evaluation_uri": report({"metrics": metrics}) if metrics is not None else "s3://x/none.json",
        "container": {"ModelDataUrl": "s3://x/model.tar.gz"},
        "quality_gate": {"accuracy": {"min": 0.85}, "f1": {"min": 0.85}},
        "deployment": {"type": "serverless", "champion_tolerance": 0.1},
        "resources": resources(),
        "runtime_libraries": locked_versions(),
        "poll_seconds": 0,
    }
    gate.update(changes)
    return {"gate": gate, "execution_name": "test-execution"}


def decide(evt: dict[str, Any]) -> dict[str, Any]:
    return app.lambda_handler(evt, Context())


def test_passing_version_is_deployed_to_its_target(world, capsys) -> None:
    result = decide(event({"accuracy": {"value": 0.9}, "f1": {"value": 0.91}}))
    assert result["decision"] == "deploy_serverless"
    assert emitted_metrics(capsys.readouterr().out) == {"GateDecisions": 1.0}
    assert result["metrics"] == {"accuracy": 0.9, "f1": 0.91}
    assert result["champion"]["version"] == "1"
    assert result["target"]["endpoint_name"] == "sagegate-development-breast-cancer-serverless"
    assert result["target"]["model_name"].startswith("sagegate-development-breast-cancer-")
    realtime = decide(
        event(
            {"accuracy": 0.9, "f1": 0.91},
            deployment={"type": "realtime", "champion_tolerance": 0.1},
            resources=resources("realtime"),
        )
    )
    assert realtime["decision"] == "deploy_realtime"
    assert realtime["target"]["endpoint_name"] == "sagegate-development-breast-cancer-realtime"
    assert (
        realtime["target"]["scalable_resource_id"] == "inference-component/sagegate-development-breast-cancer-component"
    )


@pytest.mark.parametrize(
    ("metrics", "changes", "reason"),
    [
        ({"accuracy": {"value": 0.8}, "f1": {"value": 0.9}}, {}, "accuracy 0.8000 is below the minimum 0.85"),
        ({"f1": {"value": 0.9}}, {}, "accuracy: missing or not a finite number"),
        ({"accuracy": {"value": float("nan")}, "f1": {"value": 0.9}}, {}, "accuracy: missing or not a finite number"),
        ({"accuracy": {"value": "0.9"}, "f1": {"value": 0.9}}, {}, "accuracy: missing or not a finite number"),
        ({"accuracy": 0.9, "f1": 0.9}, {"quality_gate": {}}, "no quality-gate thresholds"),
        ({"accuracy": 0.9, "f1": 0.9}, {"quality_gate": {"accuracy": {"max": 0.5}}}, "above the maximum 0.5"),
    ],
)
def test_fails_closed_with_a_reason(world, metrics, changes, reason) -> None:
    result = decide(event(metrics, **changes))
    assert result["decision"] == "reject"
    assert result["target"] is None
    assert any(reason in r for r in result["reasons"]), result["reasons"]


@pytest.mark.parametrize("body", ["{not json", json.dumps([1, 2]), json.dumps({"no": "metrics"})])
def test_unreadable_report_is_a_reject(world, body) -> None:
    evt = event()
    evt["gate"]["evaluation_uri"] = report(body)
    result = decide(evt)
    assert result["decision"] == "reject"
    assert "is unreadable" in result["reason"]


def test_missing_report_object_is_a_reject(world) -> None:
    result = decide(event(None, evaluation_uri=f"s3://{BUCKET}/evaluation/nothing-here.json"))
    assert result["decision"] == "reject" and "NoSuchKey" in result["reason"]


def test_worse_than_champion_beyond_tolerance_is_rejected(world) -> None:
    strict = {"type": "serverless", "champion_tolerance": 0.01}
    result = decide(event({"accuracy": 0.9, "f1": 0.96}, deployment=strict))
    assert result["decision"] == "reject"
    assert result["reasons"] == ["accuracy 0.9000 is worse than champion version 1's 0.9700 by 0.0700 (tolerance 0.01)"]


def test_lower_is_better_for_max_only_metrics(world) -> None:
    gate = {"accuracy": {"max": 0.99}}
    strict = {"type": "serverless", "champion_tolerance": 0.0}
    assert decide(event({"accuracy": 0.95}, quality_gate=gate, deployment=strict))["decision"] == "deploy_serverless"
    assert decide(event({"accuracy": 0.98}, quality_gate=gate, deployment=strict))["decision"] == "reject"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": "x"}, "gate.version"),
        ({"evaluation_uri": "/local/path.json"}, "gate.evaluation_uri"),
        ({"task": "clustering"}, "gate.task"),
        ({"surprise": 1}, "gate.surprise"),
        ({"version": "77"}, "unknown model version"),
        ({"quality_gate": {"accuracy": {}}}, "gate.quality_gate.accuracy: Value error, a threshold needs min, max"),
        ({"deployment": {"type": "batch"}}, "gate.deployment.type"),
        ({"deployment": {"type": "serverless", "champion_tolerance": -1}}, "gate.deployment.champion_tolerance"),
        ({"resources": {}}, "gate.resources.endpoint_name"),
    ],
)
def test_bad_input_raises_naming_the_field(world, changes, field, capsys) -> None:
    with pytest.raises(app.GateInputError, match=field.replace(".", r"\.")):
        decide(event({"accuracy": 0.9, "f1": 0.9}, **changes))
    assert emitted_metrics(capsys.readouterr().out) == {"GateInputErrors": 1.0}


def emitted_metrics(stdout: str) -> dict[str, float]:
    """The CloudWatch embedded-metric-format values the handler printed."""
    values: dict[str, float] = {}
    for line in stdout.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            for definition in document["_aws"]["CloudWatchMetrics"]:
                for metric in definition["Metrics"]:
                    value = document[metric["Name"]]  # one value, or the list of values added
                    values[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return values


def test_a_registry_error_is_a_rejection_never_no_champion(world, monkeypatch) -> None:
    """Reading the champion fails (store down, permissions...): reject with the error, do not deploy
    as if there were no champion to compare with."""
    from mlflow.exceptions import MlflowException

    def unavailable(self: Any, name: str) -> Any:
        raise MlflowException("registry temporarily unavailable", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(mlflow.MlflowClient, "get_registered_model", unavailable)
    result = decide(event({"accuracy": 0.99, "f1": 0.99}))
    assert result["decision"] == "reject" and result["target"] is None
    assert "cannot read the champion of sagegate-development-breast-cancer" in result["reason"]
    assert "registry temporarily unavailable" in result["reason"]


def test_an_unreachable_registry_is_a_rejection(world, monkeypatch, tmp_path) -> None:
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not an sqlite database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{broken}")
    result = decide(event({"accuracy": 0.99, "f1": 0.99}))
    assert result["decision"] == "reject" and "cannot read the champion" in result["reason"]


def test_a_missing_tracking_uri_is_named_and_no_store_appears_in_the_working_directory(
    world, monkeypatch, tmp_path
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    result = decide(event({"accuracy": 0.99, "f1": 0.99}))
    assert result["decision"] == "reject" and "MLFLOW_TRACKING_URI is not set" in result["reason"]
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


def test_every_result_has_every_key_the_state_machine_selects(world) -> None:
    """On AWS a missing ResultSelector path is an uncatchable States.Runtime: never omit one."""
    for evt in (event({"accuracy": 0.9, "f1": 0.9}), event({"accuracy": 0.1})):
        assert {"decision", "reason", "reasons", "metrics", "champion", "target"} <= set(decide(evt))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    metrics=st.dictionaries(st.sampled_from(["accuracy", "f1", "auc", ""]), json_values, max_size=4),
    wrap=st.booleans(),
)
def test_fuzzed_reports_never_crash_and_deploy_only_when_every_threshold_holds(world, metrics, wrap) -> None:
    body = {k: {"value": v} for k, v in metrics.items()} if wrap else metrics
    result = decide(event(body))

    def ok(name: str) -> bool:
        entry = body.get(name)
        value = entry.get("value") if isinstance(entry, dict) else entry
        return (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and value >= 0.85
            and 0.97 - value <= 0.1 + 1e-9
        )

    assert result["decision"] in ("deploy_serverless", "reject")
    assert (result["decision"] == "deploy_serverless") == (ok("accuracy") and ok("f1"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_events_are_rejected_or_refused_never_deployed_wrongly(world, data) -> None:
    evt = event({"accuracy": 0.9, "f1": 0.9})
    mutated = copy.deepcopy(evt)
    path = data.draw(
        st.sampled_from(
            [
                ("gate",),
                ("gate", "version"),
                ("gate", "quality_gate"),
                ("gate", "deployment"),
                ("gate", "model"),
                ("gate", "evaluation_uri"),
                ("gate", "deployment", "type"),
                ("gate", "quality_gate", "accuracy"),
                ("execution_name",),
                ("gate", "poll_seconds"),
                ("gate", "container"),
            ]
        )
    )
    target = mutated
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = data.draw(json_values)
    valid = True
    try:
        parsed = app.GateEvent.model_validate(mutated).gate
    except app.ValidationError:
        valid = False
    try:
        result = decide(mutated)
    except app.GateInputError as error:
        assert str(error)
        assert not valid or parsed.version not in ("1", "2")  # refused only when invalid or unregistered
        return
    assert valid, "an invalid event was evaluated instead of refused"
    assert result["decision"] == expected_decision(parsed, evt["gate"]["evaluation_uri"]), result["reasons"]


def expected_decision(gate: Any, original_report: str) -> str:
    """The oracle for a valid event: the report holds accuracy = f1 = 0.9; champion v1 has 0.97 each."""
    if gate.evaluation_uri != original_report or not gate.quality_gate:
        return "reject"
    recorded, champion = {"accuracy": 0.9, "f1": 0.9}, {"accuracy": 0.97, "f1": 0.97}
    for metric, threshold in gate.quality_gate.items():
        value = recorded.get(metric)
        if value is None or (threshold.min is not None and value < threshold.min):
            return "reject"
        if threshold.max is not None and value > threshold.max:
            return "reject"
    if gate.version != "1":
        for metric, threshold in gate.quality_gate.items():
            higher = threshold.min is not None
            best = champion[metric]
            shortfall = best - recorded[metric] if higher else recorded[metric] - best
            if shortfall > gate.deployment.champion_tolerance + 1e-9:
                return "reject"
    return f"deploy_{gate.deployment.type}"


def add_version(tags: dict[str, str]) -> str:
    client = mlflow.MlflowClient()
    return str(client.create_model_version(MODEL, source="s3://x/model.tar.gz", tags=tags).version)


def test_a_model_trained_with_other_library_versions_is_rejected_naming_both(world) -> None:
    trained = trained_with() | {"library.scikit-learn": "1.2.1"}
    version = add_version({"metric.accuracy": "0.99", "metric.f1": "0.99"} | trained)
    result = decide(event({"accuracy": 0.99, "f1": 0.99}, version=version))
    serving = locked_versions()["scikit-learn"]
    assert result["decision"] == "reject" and result["target"] is None
    assert f"trained with scikit-learn 1.2.1, the serving image has scikit-learn {serving}" in result["reason"]


def test_a_model_that_records_no_library_versions_is_rejected(world) -> None:
    version = add_version({"metric.accuracy": "0.99", "metric.f1": "0.99"})
    result = decide(event({"accuracy": 0.99, "f1": 0.99}, version=version))
    assert result["decision"] == "reject" and "records no library versions" in result["reason"]


def test_runtime_libraries_are_required_in_the_gate_input(world) -> None:
    with pytest.raises(app.GateInputError, match=r"gate\.runtime_libraries"):
        decide(event({"accuracy": 0.9, "f1": 0.9}, runtime_libraries={}))


@pytest.mark.parametrize("kind", ["evaluator", "promoter"])
def test_the_lambdas_resolve_a_managed_mlflow_arn_through_the_pinned_plugin(kind: str) -> None:
    """On AWS the gate passes the tracking server's ARN as MLFLOW_TRACKING_URI: the Lambda package
    carries sagemaker-mlflow at the version installed here, whose entry point turns the ARN into
    the tracking server's signed REST endpoint (resolved offline: no call is made)."""
    from importlib.metadata import entry_points, version

    requirements = (ROOT / "lambdas" / kind / "requirements.txt").read_text().splitlines()
    assert f"sagemaker-mlflow=={version('sagemaker-mlflow')}" in requirements
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/sagegate-staging"
    (store_class,) = [e.load() for e in entry_points(group="mlflow.tracking_store") if e.name == "arn"]
    (registry_class,) = [e.load() for e in entry_points(group="mlflow.model_registry_store") if e.name == "arn"]
    for store in (store_class(arn, None), registry_class(arn)):
        assert store.get_host_creds().host == "https://eu-west-1.experiments.sagemaker.aws"
