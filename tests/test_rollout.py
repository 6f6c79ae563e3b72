"""Safe rollout on a realtime endpoint: the gate's rolling update of the inference component, run
locally by the endpoint manager and the gateway, with the rollback alarms on the new version's live
traffic. Real pipeline runs, the real gate in moto's interpreter, boto3 clients through the gateway."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from botocore.exceptions import ClientError
from sklearn.datasets import make_friedman1

from pipelines.config import ConfigError, load_config
from pipelines.gate import gate_definition
from pipelines.local.endpoints import EndpointManager
from pipelines.local.gateway import runtime_client, start_gateway, stop_gateway
from pipelines.local.serving_metrics import read_metrics
from pipelines.local_gate import run_gate
from pipelines.local_run import run_local
from pipelines.state import Project, StateHome
from tests.conftest import MODELS, running_console, wait_for

PROJECT = Project()
ENDPOINT = "sagegate-development-friedman1-realtime"
COMPONENT = PROJECT.inference_component_name("friedman1")
QUIET = ["monitoring.data_capture.enabled=false"]


def friedman1(*overrides: str):
    return load_config(MODELS / "friedman1.yaml", [*QUIET, *overrides])


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> Iterator[StateHome]:
    """friedman1 version 1 deployed all at once (the serving version every rollout starts from)."""
    home = StateHome(tmp_path_factory.mktemp("rollout") / "state").ensure()
    monkeypatch_module.setenv("SAGEGATE_HOME", str(home.root))
    config = friedman1()
    record = run_local(config, PROJECT, home)
    assert run_gate(config, PROJECT, home, record.registered_version).status == "SUCCEEDED"
    start_gateway(home, PROJECT)
    yield home
    stop_gateway(home)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def serving_model(home: StateHome) -> str:
    return EndpointManager(home, PROJECT).snapshot()["inference_components"][COMPONENT]["Specification"]["ModelName"]


@contextmanager
def traffic(home: StateHome, clients: int = 16) -> Iterator[dict[str, int]]:
    """`clients` boto3 callers invoking the endpoint with Friedman #1 rows until the block ends."""
    rows = make_friedman1(n_samples=200, n_features=8, random_state=3)[0]
    bodies = [",".join(f"{v:.6f}" for v in row) for row in rows]
    counts = {"ok": 0, "failed": 0}
    lock, stop = threading.Lock(), threading.Event()

    def caller(index: int) -> None:
        client = runtime_client(home, PROJECT)
        sent = index
        while not stop.is_set():
            try:
                client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=bodies[sent % len(bodies)])
                outcome = "ok"
            except ClientError:
                outcome = "failed"
            with lock:
                counts[outcome] += 1
            sent += clients

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def rollout_of(execution) -> dict:
    """The last DescribeInferenceComponent answer in the gate's history (the rollout, batch by batch)."""
    described = [
        json.loads(event["taskSucceededEventDetails"]["output"])
        for event in execution.events
        if event["type"] == "TaskSucceeded" and '"Rollout"' in event["taskSucceededEventDetails"]["output"]
    ]
    return described[-1]["Rollout"]


def test_a_good_canary_moves_batch_by_batch_and_ends_on_the_new_version(serving: StateHome) -> None:
    home = serving
    before = serving_model(home)
    # a good canary, so its latency alarm has headroom: a loaded CI host once saw a p99 of 525 ms against the
    # default 500 ms and rolled back (rolling back on an alarm is what the failing canary's test checks)
    config = friedman1("deployment.rollout.type=canary", "deployment.rollout.canary_percent=25",
                       "deployment.rollout.wait_seconds=1", "model.hyperparameters.n_estimators=150",
                       "deployment.rollout.rollback_on.p99_latency_ms=5000")  # fmt: skip
    record = run_local(config, PROJECT, home)
    with traffic(home, clients=4) as counts:
        execution = run_gate(config, PROJECT, home, record.registered_version)
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    rollout = rollout_of(execution)
    assert rollout["Status"] == "Completed" and rollout["From"] == before
    assert [batch["Share"] for batch in rollout["Batches"]] == [25, 50, 75, 100]
    assert all(batch["Alarms"] == "OK" for batch in rollout["Batches"])
    assert serving_model(home) == rollout["To"] != before
    served = read_metrics(home)["models"]
    assert counts["failed"] == 0 and served[rollout["To"]]["invocations"] > 0  # the new version took its batches
    steps = [e["stateEnteredEventDetails"]["name"] for e in execution.events if e.get("stateEnteredEventDetails")]
    assert "UpdateInferenceComponentRolling" in steps and "PutRollbackErrorsAlarm" in steps


def test_linear_steps_come_in_order(serving: StateHome, monkeypatch: pytest.MonkeyPatch) -> None:
    home = serving
    monkeypatch.setenv("SAGEGATE_TIME_SCALE", "0.5")  # waits scaled, never skipped
    # judged on its batches, not against whichever version the module's earlier tests left serving
    config = friedman1("deployment.rollout.type=linear", "deployment.rollout.linear_step_percent=50",
                       "deployment.rollout.wait_seconds=2", "model.hyperparameters.n_estimators=120",
                       "deployment.champion_tolerance=1")  # fmt: skip
    record = run_local(config, PROJECT, home)
    execution = run_gate(config, PROJECT, home, record.registered_version)
    assert execution.status == "SUCCEEDED", (execution.error, execution.cause)
    batches = rollout_of(execution)["Batches"]
    assert [batch["Share"] for batch in batches] == [50, 100]
    assert batches[0]["StartedAt"] < batches[1]["StartedAt"]


def test_a_failing_canary_rolls_back_with_failures_only_in_its_share(serving: StateHome) -> None:
    home = serving
    before = serving_model(home)
    # five features: the model refuses the endpoint's real eight-feature rows (every request a ModelError)
    bad = friedman1("data.features=[x0, x1, x2, x3, x4]", "deployment.champion_tolerance=100",
                    "deployment.rollout.type=canary", "deployment.rollout.canary_percent=10",
                    "deployment.rollout.wait_seconds=5")  # fmt: skip
    record = run_local(bad, PROJECT, home)
    assert record.status == "Succeeded", record.failure_reason
    with traffic(home) as counts:
        execution = run_gate(bad, PROJECT, home, record.registered_version)
    assert (execution.status, execution.error) == ("FAILED", "Sagegate.DeploymentRolledBack")
    assert [e for e in execution.events if e["type"] == "FailStateEntered"][-1]["stateEnteredEventDetails"][
        "name"
    ] == "DeploymentRolledBack"
    assert "alarm" in execution.cause and "rollback-errors" in execution.cause  # the alarm, as the cause
    rollout = rollout_of(execution)
    assert rollout["Status"] == "RolledBack" and "rollback-errors" in rollout["Reason"]
    assert [batch["Share"] for batch in rollout["Batches"]] == [10]
    total = counts["ok"] + counts["failed"]
    assert 0 < counts["failed"] <= 0.2 * total, counts  # failures only from the canary's 10% share
    assert serving_model(home) == before  # the serving version stayed
    with traffic(home, clients=4) as after:
        wait_for(lambda: after["ok"] + after["failed"] >= 200, "200 requests after the rollback")
    assert after["failed"] == 0
    with running_console(home) as (base, _):  # the console shows the rollout, batch by batch
        page = requests.get(f"{base}/endpoints/{ENDPOINT}", timeout=30).text
    assert "status-RolledBack" in page and rollout["Reason"] in html.unescape(page)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deployment.rollout.canary_percent=60"], "deployment.rollout.canary_percent"),
        (["deployment.rollout.linear_step_percent=5"], "deployment.rollout.linear_step_percent"),
        (["deployment.rollout.wait_seconds=3601"], "deployment.rollout.wait_seconds"),
        (["deployment.rollout.max_execution_seconds=599"], "deployment.rollout.max_execution_seconds"),
        (["deployment.rollout.type=canary", "deployment.rollout.wait_seconds=600"], "must exceed the bake time"),
        (["deployment.rollout.termination_wait_seconds=10"], "no termination wait"),
        (["deployment.rollout.type=blue"], "deployment.rollout.type"),
    ],
)
def test_bad_rollout_settings_name_the_field_and_the_rule(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        friedman1(*overrides)


def test_rollout_on_serverless_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="serverless endpoint supports neither rolling updates"):
        load_config(MODELS / "breast-cancer.yaml", ["deployment.rollout.type=canary"])


def test_the_asl_sends_the_rolling_update_only_for_canary_and_linear() -> None:
    states = gate_definition()["States"]
    choose = states["ChooseRollout"]
    assert {c["StringEquals"]: c["Next"] for c in choose["Choices"]} == {
        "all_at_once": "UpdateInferenceComponent", "canary": "CanaryBatch", "linear": "LinearBatch",
    }  # fmt: skip
    assert "DeploymentConfig" not in states["UpdateInferenceComponent"]["Parameters"]
    policy = states["UpdateInferenceComponentRolling"]["Parameters"]["DeploymentConfig"]
    assert policy["RollingUpdatePolicy"]["MaximumBatchSize"] == {"Type": "CAPACITY_PERCENT",
                                                                 "Value.$": "$.rolloutBatch.percent"}  # fmt: skip
    assert len(policy["AutoRollbackConfiguration"]["Alarms"]) == 2
    assert states["CanaryBatch"]["Parameters"] == {"percent.$": "$.deployment.rollout.canary_percent"}
    assert states["LinearBatch"]["Parameters"] == {"percent.$": "$.deployment.rollout.linear_step_percent"}
    errors = states["PutRollbackErrorsAlarm"]["Parameters"]
    assert errors["Metrics"][-1]["Expression"] == "(client + server) / invocations"
    assert errors["Threshold.$"] == "$.deployment.rollout.rollback_on.error_rate"
    assert states["PutRollbackLatencyAlarm"]["Parameters"]["Metrics"][0]["MetricStat"]["Stat"] == "p99"


def test_the_aws_endpoint_stack_rolls_out_under_the_same_alarms_the_gate_names() -> None:
    from pipelines.provision import template_parameters
    from pipelines.templates import render

    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/1"
    config = friedman1("deployment.rollout.type=linear", "deployment.rollout.linear_step_percent=20")
    template, parameters = template_parameters(config, PROJECT, arn)
    assert parameters["RolloutBatchPercent"] == "20" and parameters["RolloutWaitSeconds"] == "300"
    resources = render(template, parameters)["Resources"]
    deployment = resources["InferenceComponent"]["Properties"]["DeploymentConfig"]
    batch = {"Type": "CAPACITY_PERCENT", "Value": {"Ref": "RolloutBatchPercent"}}
    assert deployment["RollingUpdatePolicy"]["MaximumBatchSize"] == batch
    names = [alarm["AlarmName"]["Fn::Sub"] for alarm in deployment["AutoRollbackConfiguration"]["Alarms"]]
    gate_names = [f"{COMPONENT}-rollback-errors", f"{COMPONENT}-rollback-latency"]
    assert [name.replace("${Project}-${Environment}-${ModelName}", "sagegate-development-friedman1")
            for name in names] == gate_names  # fmt: skip
    assert [
        resources[r]["Properties"]["AlarmName"]["Fn::Sub"] for r in ("RollbackErrorsAlarm", "RollbackLatencyAlarm")
    ] == names
    assert (
        resources["RollbackErrorsAlarm"]["Properties"]["Metrics"][-1]["Expression"]
        == (gate_definition()["States"]["PutRollbackErrorsAlarm"]["Parameters"]["Metrics"][-1]["Expression"])
    )
    _, all_at_once = template_parameters(friedman1(), PROJECT, arn)
    plain = render(template, all_at_once)["Resources"]  # the template's default 0: no DeploymentConfig, no alarms
    assert "DeploymentConfig" not in plain["InferenceComponent"]["Properties"] and "RollbackErrorsAlarm" not in plain
