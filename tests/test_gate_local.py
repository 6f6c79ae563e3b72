"""The gate's real ASL in moto's interpreter, with the real Lambda handlers and local endpoints."""

from __future__ import annotations

import json

import mlflow
import pytest

from pipelines.execution_view import render_graph, state_rows
from pipelines.local.s3 import LocalS3
from pipelines.local.sfn_patch import LambdaServiceError
from pipelines.local_gate import LocalGate, gate_input, list_executions, load_execution
from pipelines.state import Project, StateHome
from tests.gate_fixtures import breast_cancer, register_version

GOOD = {"accuracy": 0.95, "f1": 0.96}
PROJECT = Project()


@pytest.fixture
def home(tmp_path) -> StateHome:
    return StateHome(tmp_path / "state").ensure()


def deploy_first(home: StateHome) -> str:
    """A serving version, so that later scenarios have something to leave untouched."""
    config = breast_cancer()
    version = register_version(home, PROJECT, config, GOOD)
    with LocalGate(PROJECT, home) as gate:
        assert gate.execute(gate_input(config, PROJECT, home, version)).status == "SUCCEEDED"
    return version


def champion(home: StateHome, config_name: str = "breast-cancer") -> str | None:
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    try:
        return str(client.get_model_version_by_alias(f"sagegate-development-{config_name}", "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def endpoint(gate: LocalGate, name: str) -> dict:
    return gate.manager.call("describeEndpoint", {"EndpointName": name})


def test_serverless_branch_deploys_and_records_champion(home: StateHome) -> None:
    config = breast_cancer()
    version = register_version(home, PROJECT, config, GOOD)
    with LocalGate(PROJECT, home) as gate:
        record = gate.execute(gate_input(config, PROJECT, home, version))
        assert record.status == "SUCCEEDED", record.cause
        assert record.decision == "deploy_serverless"
        described = endpoint(gate, "sagegate-development-breast-cancer-serverless")
        assert described["EndpointStatus"] == "InService"
        config_record = gate.manager.snapshot()["endpoint_configs"][described["EndpointConfigName"]]
        assert config_record["ProductionVariants"][0]["ServerlessConfig"] == {
            "MemorySizeInMB": 2048,
            "MaxConcurrency": 5,
        }
    assert champion(home) == version
    tags = (
        mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
        .get_model_version("sagegate-development-breast-cancer", version)
        .tags
    )
    assert tags["approval_status"] == "Approved"
    assert tags["deployed.endpoint"] == "sagegate-development-breast-cancer-serverless"
    # the daily batch pipeline's model input: the champion's artifact, published by the promoter
    with LocalS3(home) as s3:
        champion_artifact = s3.read(PROJECT.champion_artifact_uri("breast-cancer"))
        served = s3.read(gate_input(config, PROJECT, home, version)["container"]["ModelDataUrl"])
    assert champion_artifact is not None and champion_artifact == served


def test_realtime_branch_uses_scale_to_zero_config_and_an_inference_component(home: StateHome) -> None:
    config = breast_cancer("deployment.type=realtime", "deployment.max_instances=3")
    version = register_version(home, PROJECT, config, GOOD)
    with LocalGate(PROJECT, home) as gate:
        record = gate.execute(gate_input(config, PROJECT, home, version))
        assert record.status == "SUCCEEDED", record.cause
        visited = [row["state"] for row in state_rows(record)]
        assert "CreateInferenceComponent" in visited and "CheckInferenceComponent" in visited
        state = gate.manager.snapshot()
        described = endpoint(gate, "sagegate-development-breast-cancer-realtime")
        variant = state["endpoint_configs"][described["EndpointConfigName"]]["ProductionVariants"][0]
        assert "ModelName" not in variant
        assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 3}
        component = state["inference_components"]["sagegate-development-breast-cancer-component"]
        assert component["InferenceComponentStatus"] == "InService"
        assert component["Specification"]["ModelName"] == record.output["evaluation"]["target"]["model_name"]
        # scale to zero: scalable target down to min_instances, tracking with the YAML's cooldowns, step +1 on alarm
        resource = "inference-component/sagegate-development-breast-cancer-component"
        assert state["scalable_targets"][resource]["MinCapacity"] == 0
        assert state["scalable_targets"][resource]["MaxCapacity"] == 3
        tracking = state["scaling_policies"]["sagegate-development-breast-cancer-component-invocations-per-copy"]
        assert tracking["TargetTrackingScalingPolicyConfiguration"]["ScaleInCooldown"] == 300
        step = state["scaling_policies"]["sagegate-development-breast-cancer-component-scale-out-from-zero"]
        alarm = state["alarms"]["sagegate-development-breast-cancer-component-no-capacity"]
        assert alarm["MetricName"] == "NoCapacityInvocationFailures"
        assert alarm["AlarmActions"] == [step["PolicyARN"]]
        # a second deployment updates the component in place (blue/green on the same endpoint)
        second = gate.execute(gate_input(config, PROJECT, home, version))
        assert second.status == "SUCCEEDED", second.cause
        assert "UpdateInferenceComponent" in [row["state"] for row in state_rows(second)]


def test_below_threshold_is_rejected_and_the_endpoint_keeps_serving(home: StateHome) -> None:
    config = breast_cancer()
    deploy_first(home)
    version = register_version(home, PROJECT, config, {"accuracy": 0.70, "f1": 0.96})
    with LocalGate(PROJECT, home) as gate:
        before = endpoint(gate, "sagegate-development-breast-cancer-serverless")
        record = gate.execute(gate_input(config, PROJECT, home, version))
        assert record.status == "FAILED"
        assert record.error == "Sagegate.Rejected"
        assert "accuracy 0.7000 is below the minimum 0.85" in record.cause
        assert endpoint(gate, "sagegate-development-breast-cancer-serverless") == before
    assert champion(home) != version


def test_worse_challenger_than_champion_is_rejected_within_tolerance_deployed(home: StateHome) -> None:
    config = breast_cancer("deployment.champion_tolerance=0.01")
    top = register_version(home, PROJECT, config, {"accuracy": 0.99, "f1": 0.99})
    worse = register_version(home, PROJECT, config, {"accuracy": 0.95, "f1": 0.99})
    close = register_version(home, PROJECT, config, {"accuracy": 0.985, "f1": 0.99})
    with LocalGate(PROJECT, home) as gate:
        assert gate.execute(gate_input(config, PROJECT, home, top)).status == "SUCCEEDED"
        rejected = gate.execute(gate_input(config, PROJECT, home, worse))
        assert rejected.error == "Sagegate.Rejected"
        assert f"worse than champion version {top}" in rejected.cause
        assert gate.execute(gate_input(config, PROJECT, home, close)).status == "SUCCEEDED"
    assert champion(home) == close


def test_retry_recovers_from_lambda_throttling(home: StateHome) -> None:
    config = breast_cancer()
    version = register_version(home, PROJECT, config, GOOD)
    with LocalGate(PROJECT, home) as gate:
        evaluator = gate_handlers(gate)
        calls = []

        def throttled_once(event: dict, context: object) -> dict:
            calls.append(1)
            if len(calls) == 1:
                raise LambdaServiceError()
            return evaluator(event, context)

        install_handler(gate, "evaluator", throttled_once)
        record = gate.execute(gate_input(config, PROJECT, home, version))
    assert record.status == "SUCCEEDED", record.cause
    failures = [e["taskFailedEventDetails"]["error"] for e in record.events if e["type"] == "TaskFailed"]
    assert "Lambda.TooManyRequestsException" in failures
    assert len(calls) == 2


def test_evaluator_crash_is_caught_and_nothing_is_deployed(home: StateHome) -> None:
    config = breast_cancer()
    version = register_version(home, PROJECT, config, GOOD)
    with LocalGate(PROJECT, home) as gate:
        before = gate.manager.snapshot()

        def broken(event: dict, context: object) -> dict:
            raise RuntimeError("evaluator bug")

        install_handler(gate, "evaluator", broken)
        record = gate.execute(gate_input(config, PROJECT, home, version))
        assert (record.status, record.error) == ("FAILED", "Sagegate.EvaluationFailed")
        assert record.reasons == ["evaluator bug"]
        assert gate.manager.snapshot() == before


def test_failed_update_rolls_back_to_the_serving_version(home: StateHome) -> None:
    config = breast_cancer()
    deploy_first(home)
    version = register_version(home, PROJECT, config, GOOD, model_data=False)
    serving = champion(home)
    with LocalGate(PROJECT, home) as gate:
        before = endpoint(gate, "sagegate-development-breast-cancer-serverless")
        record = gate.execute(gate_input(config, PROJECT, home, version))
        assert (record.status, record.error) == ("FAILED", "Sagegate.DeploymentRolledBack")
        assert [r["state"] for r in state_rows(record)][-1] == "DeploymentRolledBack"
        assert "does not exist" in record.cause  # SageMaker's reason, as the failure's cause
        after = endpoint(gate, "sagegate-development-breast-cancer-serverless")
        assert after["EndpointStatus"] == "InService"
        assert after["EndpointConfigName"] == before["EndpointConfigName"]
        assert "does not exist" in after["FailureReason"]
    assert champion(home) == serving


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda i: i.pop("evaluation_uri"), "gate.evaluation_uri: Field required"),
        (lambda i: i.update(version="two"), "gate.version"),
        (lambda i: i["deployment"].update(memory_size_mb="lots"), "gate.deployment.memory_size_mb"),
        (lambda i: i.update(version="999"), "unknown model version: sagegate-development-breast-cancer version 999"),
        (lambda i: i.update(model="Not A Model"), "gate.model"),
    ],
)
def test_bad_execution_input_fails_the_execution_and_deploys_nothing(home: StateHome, mutate, message) -> None:
    config = breast_cancer()
    deploy_first(home)
    version = register_version(home, PROJECT, config, GOOD)
    execution_input = gate_input(config, PROJECT, home, version)
    mutate(execution_input)
    with LocalGate(PROJECT, home) as gate:
        before = gate.manager.snapshot()
        record = gate.execute(execution_input)
        assert (record.status, record.error) == ("FAILED", "Sagegate.EvaluationFailed")
        assert message in record.reasons[0]
        assert gate.manager.snapshot() == before


def test_input_that_is_not_an_object_fails_without_deploying(home: StateHome) -> None:
    deploy_first(home)
    with LocalGate(PROJECT, home) as gate:
        before = gate.manager.snapshot()
        record = gate.execute('["not", "an", "object"]')
        # as on AWS: the evaluator rejects it, and the Catch cannot merge $.error into an array
        assert (record.status, record.error) == ("FAILED", "States.Runtime")
        assert gate.manager.snapshot() == before


def test_executions_persist_and_render(home: StateHome, tmp_path) -> None:
    deploy_first(home)
    records, _ = list_executions(StateHome(home.root))  # a fresh view of the folder, as after a restart
    assert [r.status for r in records] == ["SUCCEEDED"]
    latest = load_execution(home, records[0].name[:10])
    rows = state_rows(latest)
    assert rows[0]["state"] == "EvaluateModel" and rows[0]["input"] is not None
    assert all(row["duration_seconds"] is not None for row in rows[:-1])
    image = render_graph(latest, tmp_path / "graph.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((home.root / "endpoints" / "state.json").read_text())["endpoints"]


def gate_handlers(gate: LocalGate):
    from pipelines.local import sfn_patch

    return sfn_patch._handlers[PROJECT.gate_function_name("evaluator")]


def install_handler(gate: LocalGate, kind: str, handler) -> None:
    from pipelines.local import sfn_patch

    sfn_patch._handlers[PROJECT.gate_function_name(kind)] = handler
