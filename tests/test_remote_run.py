"""`sagegate run` on SageMaker, proven offline: a moto server stands in for AWS (`AWS_ENDPOINT_URL`,
honoured by boto3 in the CLI process), with the environment's bucket and roles stacks created from
the real templates; the follow loop is driven by recorded AWS responses for the transitions moto
does not make (it marks an execution Succeeded at once and has no ListPipelineExecutionSteps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from pipelines.remote_run import RemoteRunError, follow, preflight
from pipelines.state import Project, StateHome
from pipelines.templates import render
from tests.conftest import MODELS
from tests.moto_server import moto_server

PROJECT = Project()
PIPELINE = "sagegate-development-breast-cancer-training"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory):
    """A moto server with the development environment's bucket and roles stacks deployed."""
    with moto_server() as environment, pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        cloudformation = boto3.client("cloudformation")
        for stack, template in (("training-bucket", "training-bucket.yaml"), ("iam-roles", "iam-roles.yaml")):
            cloudformation.create_stack(
                StackName=PROJECT.stack_name(stack),
                TemplateBody=json.dumps(render(template, {"Environment": "development"})),
                Parameters=[{"ParameterKey": "Environment", "ParameterValue": "development"}],
                Capabilities=["CAPABILITY_NAMED_IAM"],
            )
        yield environment, StateHome(tmp_path_factory.mktemp("remote") / "state")


def sagegate(home: StateHome, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "sagegate"
    variables = {**os.environ, **environment, "SAGEGATE_HOME": str(home.root)}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=variables)


def test_a_run_uploads_upserts_the_printed_definition_and_starts_an_execution(aws) -> None:
    environment, home = aws
    config = str(MODELS / "breast-cancer.yaml")
    started = sagegate(home, environment, "run", config, "--platform", "sagemaker", "--no-wait")
    assert started.returncode == 0, started.stderr
    arn = started.stdout.split("started ", 1)[1].split()[0]
    assert arn.startswith(f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/{PIPELINE}/execution/")

    sagemaker, s3 = boto3.client("sagemaker"), boto3.client("s3")
    printed = sagegate(home, environment, "pipeline", "definition", config).stdout
    deployed = sagemaker.describe_pipeline(PipelineName=PIPELINE)
    assert json.loads(deployed["PipelineDefinition"]) == json.loads(printed)
    assert deployed["RoleArn"] == PROJECT.training_role_arn  # from the roles stack's export
    # the data and every object the definition references are in the bucket
    staged = s3.get_object(Bucket=PROJECT.bucket, Key="training-data/breast-cancer/data.csv")["Body"].read()
    assert staged == (MODELS.parent / "data" / "breast_cancer.csv").read_bytes()
    code = set(re.findall(rf"s3://{PROJECT.bucket}/(training-code/[^\"\\\\]+)", printed))
    assert code
    for key in code:
        s3.head_object(Bucket=PROJECT.bucket, Key=key)
    parameters = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    staged_uri = f"s3://{PROJECT.bucket}/training-data/breast-cancer/data.csv"
    assert {"Name": "InputDataUri", "Value": staged_uri} in parameters
    # a second run updates the same pipeline and starts a second execution
    again = sagegate(home, environment, "run", config, "--platform", "sagemaker", "--no-wait", "--json")
    assert again.returncode == 0, again.stderr
    assert len(sagemaker.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]) == 2
    listed = sagegate(home, environment, "runs", "--json")
    remote = [r for r in json.loads(listed.stdout) if r["platform"] == "sagemaker"]
    assert {r["execution_arn"] for r in remote} == {arn, json.loads(again.stdout)["execution_arn"]}
    assert "sagemaker" in sagegate(home, environment, "runs").stdout


def test_what_is_missing_is_named_with_what_to_do(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    session = boto3.Session(region_name="us-east-1")
    assert preflight(session, PROJECT) == PROJECT.training_role_arn
    missing_bucket = r"training bucket sagegate-staging-training is not reachable .*deploy\.sh staging"
    with pytest.raises(RemoteRunError, match=missing_bucket):
        preflight(session, Project(environment="staging"))
    s3 = session.client("s3")
    s3.create_bucket(Bucket="sagegate-production-training")
    with pytest.raises(RemoteRunError, match="export sagegate-production-sagemaker-training-role-arn not found"):
        preflight(session, Project(environment="production"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RemoteRunError, match="no AWS credentials"):
        preflight(boto3.Session(region_name="us-east-1"), PROJECT)


EXECUTION = f"arn:aws:sagemaker:us-east-1:123456789012:pipeline/{PIPELINE}/execution/abc123"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def step(name: str, status: str, seconds: float | None = None, reason: str | None = None) -> dict:
    entry = {"StepName": name, "StepStatus": status, "StartTime": T0}
    if seconds is not None:
        entry["EndTime"] = T0 + timedelta(seconds=seconds)
    if reason:
        entry["FailureReason"] = reason
    return entry


def recorded(stubber: Stubber, polls: list[tuple[list[dict], str, str | None]]) -> None:
    """The responses AWS gave, poll by poll: the steps so far, then the execution's status."""
    for steps, status, reason in polls:
        stubber.add_response(
            "list_pipeline_execution_steps",
            {"PipelineExecutionSteps": steps},
            {"PipelineExecutionArn": EXECUTION, "SortOrder": "Ascending"},
        )
        described = {"PipelineExecutionArn": EXECUTION, "PipelineExecutionStatus": status}
        if reason:
            described["FailureReason"] = reason
        stubber.add_response("describe_pipeline_execution", described, {"PipelineExecutionArn": EXECUTION})


def test_follow_reports_each_step_once_and_ends_with_the_execution() -> None:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    seen: list[tuple[str, str, float | None]] = []
    sleeps: list[float] = []
    with Stubber(client) as stubber:
        recorded(stubber, [
            ([step("PreprocessData", "Starting")], "Executing", None),
            ([step("PreprocessData", "Executing")], "Executing", None),
            ([step("PreprocessData", "Succeeded", 61), step("TrainModel", "Executing")], "Executing", None),
            ([step("PreprocessData", "Succeeded", 61), step("TrainModel", "Succeeded", 95.5),
              step("EvaluateModel", "Succeeded", 40), step("CheckQualityGate", "Succeeded", 1),
              step("RegisterMlflowModel", "Succeeded", 30), step("RegisterModelPackage-RegisterModel", "Succeeded", 2)],
             "Succeeded", None),
        ])  # fmt: skip
        status, steps, reason = follow(client, EXECUTION, lambda *a: seen.append(a), 15, sleeps.append)
        stubber.assert_no_pending_responses()
    assert (status, reason) == ("Succeeded", None) and sleeps == [15, 15, 15]
    assert seen[:3] == [("PreprocessData", "Executing", None), ("PreprocessData", "Succeeded", 61.0),
                        ("TrainModel", "Executing", None)]  # fmt: skip
    assert ("TrainModel", "Succeeded", 95.5) in seen and len(seen) == 8  # Starting→Executing is no change
    assert [s.name for s in steps][-1] == "RegisterModelPackage-RegisterModel"


def test_a_failed_execution_ends_the_follow_with_its_reason() -> None:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    reason = "Step failure: One or multiple steps failed."
    with Stubber(client) as stubber:
        recorded(stubber, [
            ([step("PreprocessData", "Succeeded", 60), step("TrainModel", "Executing")], "Executing", None),
            ([step("PreprocessData", "Succeeded", 60),
              step("TrainModel", "Failed", 12, "AlgorithmError: training train.py failed: max_depth must be >= 1")],
             "Failed", reason),
        ])  # fmt: skip
        status, steps, failure = follow(client, EXECUTION, None, 0, lambda _: None)
    assert (status, failure) == ("Failed", reason)
    assert steps[-1].failure_reason.startswith("AlgorithmError: training train.py failed")
