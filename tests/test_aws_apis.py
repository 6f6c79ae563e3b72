"""The gateway's URL as a SageMaker and Step Functions endpoint: unmodified boto3 clients and the AWS
CLI read the local pipeline executions, endpoints, model packages and gate executions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pipelines.config import load_config
from pipelines.local.gateway import start_gateway, stop_gateway
from pipelines.local_gate import run_gate
from pipelines.local_run import run_local
from pipelines.state import Project, StateHome
from tests.conftest import MODELS, wait_for

PROJECT = Project()
PIPELINE = "sagegate-development-breast-cancer-training"
GATE = f"arn:aws:states:us-east-1:{PROJECT.account}:stateMachine:sagegate-development-deployment-gate"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    home = StateHome(tmp_path_factory.mktemp("apis") / "state").ensure()
    config = load_config(MODELS / "breast-cancer.yaml")
    record = run_local(config, PROJECT, home)
    execution = run_gate(config, PROJECT, home, record.registered_version)
    url = start_gateway(home, PROJECT)["url"]
    yield home, url, record, execution
    stop_gateway(home)


def client(service: str, url: str):
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local"
    )


def test_pipeline_executions_and_their_steps_read_as_sagemaker_answers(world) -> None:
    _, url, record, _ = world
    sagemaker = client("sagemaker", url)
    assert [p["PipelineName"] for p in sagemaker.list_pipelines()["PipelineSummaries"]] == [PIPELINE]
    (summary,) = sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    assert summary["PipelineExecutionStatus"] == "Succeeded"
    arn = summary["PipelineExecutionArn"]
    assert arn.endswith(f"pipeline/{PIPELINE}/execution/{record.attempt}")
    assert summary["PipelineExecutionDisplayName"] == record.run_id
    described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert (
        described["PipelineExecutionStatus"] == "Succeeded"
        and described["LastModifiedTime"] >= described["CreationTime"]
    )
    steps = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    assert [s["StepName"] for s in steps] == [s.name for s in reversed(record.steps)]
    assert {s["StepStatus"] for s in steps} == {"Succeeded"}


def test_endpoints_and_model_packages_read_as_sagemaker_answers(world) -> None:
    _, url, record, execution = world
    sagemaker = client("sagemaker", url)
    names = [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]]
    assert names == [execution.endpoint]
    assert sagemaker.describe_endpoint(EndpointName=execution.endpoint)["EndpointStatus"] == "InService"
    packages = sagemaker.list_model_packages(ModelPackageGroupName=record.registered_model)["ModelPackageSummaryList"]
    assert [(p["ModelPackageVersion"], p["ModelApprovalStatus"]) for p in packages] == [(1, "Approved")]


def test_gate_executions_read_as_step_functions_answers(world) -> None:
    _, url, _, execution = world
    states = client("stepfunctions", url)
    assert [m["stateMachineArn"] for m in states.list_state_machines()["stateMachines"]] == [GATE]
    (listed,) = states.list_executions(stateMachineArn=GATE)["executions"]
    assert (listed["name"], listed["status"]) == (execution.name, "SUCCEEDED")
    described = states.describe_execution(executionArn=execution.arn)
    assert json.loads(described["input"])["version"] == "1" and described["stopDate"] >= described["startDate"]
    events = states.get_execution_history(executionArn=execution.arn)["events"]
    assert events[0]["type"] == "ExecutionStarted" and events[-1]["type"] == "ExecutionSucceeded"
    assert states.list_executions(stateMachineArn=GATE, statusFilter="FAILED")["executions"] == []


def test_errors_use_the_apis_codes(world) -> None:
    _, url, _, _ = world
    sagemaker, states = client("sagemaker", url), client("stepfunctions", url)
    missing = f"arn:aws:sagemaker:us-east-1:{PROJECT.account}:pipeline/{PIPELINE}/execution/nope"
    with pytest.raises(sagemaker.exceptions.ResourceNotFound):
        sagemaker.describe_pipeline_execution(PipelineExecutionArn=missing)
    with pytest.raises(states.exceptions.ExecutionDoesNotExist):
        states.describe_execution(executionArn=f"{GATE.replace('stateMachine', 'execution')}:nope")
    with pytest.raises(sagemaker.exceptions.ClientError, match="ValidationException"):
        sagemaker.describe_endpoint(EndpointName="no-such-endpoint")
    with pytest.raises(sagemaker.exceptions.ClientError, match="UnknownOperationException"):
        sagemaker.list_training_jobs()


def test_start_pipeline_execution_needs_the_local_token_and_runs_the_pipeline_and_gate(world) -> None:
    from pipelines.local.api_token import local_token, token_path

    home, url, _, _ = world
    with pytest.raises(client("sagemaker", url).exceptions.ClientError, match="AccessDeniedException"):
        client("sagemaker", url).start_pipeline_execution(PipelineName=PIPELINE)
    wrong = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                         aws_secret_access_key="local", aws_session_token="not-the-token")  # fmt: skip
    with pytest.raises(wrong.exceptions.ClientError, match="AccessDeniedException"):
        wrong.start_pipeline_execution(PipelineName=PIPELINE)
    assert token_path(home).stat().st_mode & 0o777 == 0o600
    sagemaker = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                             aws_secret_access_key="local", aws_session_token=local_token(home))  # fmt: skip
    with pytest.raises(sagemaker.exceptions.ResourceNotFound):
        sagemaker.start_pipeline_execution(PipelineName="sagegate-development-nothing-training")
    arn = sagemaker.start_pipeline_execution(PipelineName=PIPELINE)["PipelineExecutionArn"]
    assert sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"] == "Executing"

    def finished() -> str | None:
        status = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        return None if status == "Executing" else status

    assert wait_for(finished, "the started execution to finish", 240) == "Succeeded"
    packages = sagemaker.list_model_packages(ModelPackageGroupName="sagegate-development-breast-cancer")
    assert [p["ModelPackageVersion"] for p in packages["ModelPackageSummaryList"]] == [1, 2]
    states = client("stepfunctions", url)

    def gated() -> list[str] | None:  # as on AWS, the gate follows the registration, after the pipeline
        statuses = [e["status"] for e in states.list_executions(stateMachineArn=GATE)["executions"]]
        return statuses if len(statuses) == 2 and "RUNNING" not in statuses else None

    assert wait_for(gated, "the gate's execution on version 2", 120) == ["SUCCEEDED", "SUCCEEDED"]


def test_the_aws_cli_reads_them_with_endpoint_url(world) -> None:
    _, url, _, execution = world
    aws = str(Path(sys.executable).parent / "aws")
    environment = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def cli(*args: str) -> dict:
        done = subprocess.run(
            [aws, *args, "--endpoint-url", url, "--output", "json"], capture_output=True, text=True, env=environment
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    executions = cli("sagemaker", "list-pipeline-executions", "--pipeline-name", PIPELINE)
    assert executions["PipelineExecutionSummaries"][0]["PipelineExecutionStatus"] == "Succeeded"
    described = cli("stepfunctions", "describe-execution", "--execution-arn", execution.arn)
    assert described["status"] == "SUCCEEDED"


def test_the_training_schedule_fires_through_start_pipeline_execution(world) -> None:
    from datetime import UTC, datetime

    from pipelines.schedules import LocalFire, model_schedules

    home, url, _, _ = world
    sagemaker = client("sagemaker", url)
    before = len(sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"])
    (training, *_) = model_schedules(load_config(MODELS / "breast-cancer.yaml"), PROJECT)
    lines: list[str] = []
    LocalFire(home, PROJECT, lines.append)(training, datetime.now(UTC))
    assert "sagegate-development-breast-cancer-weekly-training: started arn:aws:sagemaker:" in lines[0]
    arn = lines[0].rsplit(" ", 1)[1]
    listed = sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    assert len(listed) == before + 1 and listed[0]["PipelineExecutionArn"] == arn

    def finished() -> str | None:
        status = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"]
        return None if status == "Executing" else status

    assert wait_for(finished, "the scheduled run to finish", 240) == "Succeeded"


def test_start_execution_runs_the_gate_with_the_local_token(world) -> None:
    from pipelines.local.api_token import local_token

    home, url, _, _ = world
    plain = client("stepfunctions", url)
    request = {
        "stateMachineArn": GATE,
        "name": "api-started",
        "input": json.dumps({"model": "breast-cancer", "version": "1"}),
    }
    with pytest.raises(plain.exceptions.ClientError, match="AccessDeniedException"):
        plain.start_execution(**request)
    states = boto3.client("stepfunctions", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                          aws_secret_access_key="local", aws_session_token=local_token(home))  # fmt: skip
    started = states.start_execution(**request)
    assert started["executionArn"].endswith(":execution:sagegate-development-deployment-gate:api-started")
    described = states.describe_execution(executionArn=started["executionArn"])
    assert described["status"] == "SUCCEEDED" and json.loads(described["input"])["version"] == "1"
    with pytest.raises(states.exceptions.ExecutionAlreadyExists):
        states.start_execution(**request)
    with pytest.raises(states.exceptions.StateMachineDoesNotExist):
        states.start_execution(**{**request, "stateMachineArn": GATE + "-other", "name": "x"})
    with pytest.raises(states.exceptions.InvalidExecutionInput, match="version"):
        states.start_execution(stateMachineArn=GATE, name="y", input=json.dumps({"model": "breast-cancer"}))
    with pytest.raises(states.exceptions.InvalidExecutionInput, match="no version or alias '9'"):
        states.start_execution(
            stateMachineArn=GATE, name="z", input=json.dumps({"model": "breast-cancer", "version": "9"})
        )


@pytest.mark.parametrize(
    "hostile", ["../../etc/passwd", "..%2F..%2Fetc", "a/b", "x" * 10_000, "name with spaces", "\x00"]
)
def test_hostile_names_are_refused_and_never_reach_a_path(world, hostile: str) -> None:
    from pipelines.local.api_token import local_token

    home, url, _, _ = world
    token = local_token(home)
    kwargs = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "local",
              "aws_secret_access_key": "local", "aws_session_token": token}  # fmt: skip
    states, sagemaker = boto3.client("stepfunctions", **kwargs), boto3.client("sagemaker", **kwargs)
    with pytest.raises(states.exceptions.ClientError, match=r"InvalidName|ValidationException"):
        states.start_execution(
            stateMachineArn=GATE, name=hostile, input=json.dumps({"model": "breast-cancer", "version": "1"})
        )
    with pytest.raises(states.exceptions.ClientError, match=r"InvalidExecutionInput|ValidationException"):
        states.start_execution(stateMachineArn=GATE, name="ok", input=json.dumps({"model": hostile, "version": "1"}))
    with pytest.raises(states.exceptions.ClientError, match=r"ExecutionDoesNotExist|ValidationException"):
        states.describe_execution(executionArn=f"{GATE.replace('stateMachine', 'execution')}:{hostile}")
    with pytest.raises(sagemaker.exceptions.ClientError, match=r"ResourceNotFound|ValidationException"):
        sagemaker.start_pipeline_execution(PipelineName=f"sagegate-development-{hostile}-training")
    with pytest.raises(sagemaker.exceptions.ClientError, match=r"ResourceNotFound|ValidationException"):
        sagemaker.describe_pipeline_execution(
            PipelineExecutionArn=f"arn:aws:sagemaker:us-east-1:1:pipeline/x/execution/{hostile}"
        )
    assert not (home.root / "etc").exists() and not any(home.root.parent.glob("*passwd*"))


def test_mlflow_ui_serves_the_state_folders_store(world, tmp_path: Path) -> None:
    import socket
    import urllib.request

    home, _, record, _ = world
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = Path(sys.executable).parent / "sagegate"
    log = (tmp_path / "ui.log").open("wb")
    server = subprocess.Popen([str(exe), "mlflow", "ui", "--port", str(port)], stdout=log, stderr=log,
                              env={**os.environ, "SAGEGATE_HOME": str(home.root)}, start_new_session=True)  # fmt: skip
    try:

        def answers() -> bytes | None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search", method="GET"
                )
                return urllib.request.urlopen(request, timeout=2).read()
            except OSError:
                return None

        body = wait_for(answers, "the MLflow UI to answer", 90)
        assert record.registered_model in body.decode()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
