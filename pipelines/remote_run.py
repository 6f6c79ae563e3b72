"""`sagegate run` with `training.platform: sagemaker`: the same pipeline, executed by SageMaker.

It checks what a run needs (credentials, the environment's bucket, the roles stack's export),
uploads the data and the step code the definition references, upserts exactly the definition
`sagegate pipeline definition` prints, starts an execution with the config's data as
`InputDataUri`, and follows it step by step with the same progress and record as a local run.
`AWS_ENDPOINT_URL` is honoured (boto3), which is how the tests run it against a moto server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from pipelines.config import ModelConfig
from pipelines.definition import export_definition
from pipelines.local_run import Progress, RunRecord, StepRecord, save_record
from pipelines.staging import stage_inputs
from pipelines.state import Project, StateHome

TERMINAL = ("Succeeded", "Failed", "Stopped")


class RemoteRunError(RuntimeError):
    """A remote run that cannot start; the message says what to do."""


def preflight(session: boto3.Session, project: Project) -> str:
    """The training role's ARN, once credentials, the bucket and the roles stack are known to exist."""
    deploy = f"deploy the environment first: scripts/deploy.sh {project.environment} --region {project.region}"
    try:
        session.client("sts").get_caller_identity()
    except (NoCredentialsError, PartialCredentialsError):
        raise RemoteRunError("no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE") from None
    except (ClientError, BotoCoreError) as error:
        raise RemoteRunError(f"AWS refused the credentials ({error}): check `aws sts get-caller-identity`") from None
    try:
        session.client("s3").head_bucket(Bucket=project.bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise RemoteRunError(
            f"training bucket {project.bucket} is not reachable in {project.region} ({code}): {deploy}"
        ) from None
    export = project.name("sagemaker-training-role-arn")
    pages = session.client("cloudformation").get_paginator("list_exports").paginate()
    for page in pages:
        for item in page.get("Exports", []):
            if item["Name"] == export:
                return str(item["Value"])
    raise RemoteRunError(f"CloudFormation export {export} not found (the roles stack): {deploy}")


def _upload_missing(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    """Content-addressed keys: an object already there is the same object. No SSE argument: `aws:kms`
    without a key id would pick the AWS-managed aws/s3 key; the bucket default applies the project key."""
    for key, body in sorted(objects.items()):
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError:
            s3.put_object(Bucket=bucket, Key=key, Body=body)


def start(config: ModelConfig, project: Project, session: boto3.Session) -> str:
    """Upload, upsert, start: the new execution's ARN."""
    role = preflight(session, project)
    s3 = session.client("s3")
    try:
        inputs = stage_inputs(config, project, s3)
    except FileNotFoundError as error:
        raise RemoteRunError(str(error)) from None
    exported = export_definition(config, project)
    _upload_missing(s3, project.bucket, exported.code)
    sagemaker = session.client("sagemaker")
    name = project.pipeline_name(config.name)
    try:
        sagemaker.create_pipeline(PipelineName=name, PipelineDefinition=exported.json, RoleArn=role)
    except ClientError as error:
        if "already exists" not in str(error):
            raise
        sagemaker.update_pipeline(PipelineName=name, PipelineDefinition=exported.json, RoleArn=role)
    started = sagemaker.start_pipeline_execution(
        PipelineName=name,
        PipelineParameters=[{"Name": name, "Value": uri} for name, uri in inputs.items()],
        ClientRequestToken=uuid.uuid4().hex,
    )
    return str(started["PipelineExecutionArn"])


def _steps(sagemaker: Any, arn: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for page in sagemaker.get_paginator("list_pipeline_execution_steps").paginate(
        PipelineExecutionArn=arn, SortOrder="Ascending"
    ):
        steps += page.get("PipelineExecutionSteps", [])
    return steps


def follow(
    sagemaker: Any,
    arn: str,
    progress: Progress | None = None,
    poll_seconds: float = 15,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, list[StepRecord], str | None]:
    """Poll until the execution ends: its status, its steps, its failure reason. Each step's change
    is reported once, as a local run reports it (Executing, then Succeeded/Failed/Stopped)."""
    reported: dict[str, str] = {}
    while True:
        records = []
        for step in _steps(sagemaker, arn):
            name, status = step["StepName"], step["StepStatus"]
            status = "Executing" if status in ("Starting", "Executing", "Stopping") else status
            seconds = None
            if step.get("StartTime") and step.get("EndTime"):
                seconds = (step["EndTime"] - step["StartTime"]).total_seconds()
            records.append(StepRecord(name, status, seconds, step.get("FailureReason")))
            if progress and reported.get(name) != status:
                progress(name, status, seconds)
            reported[name] = status
        described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)
        status = described["PipelineExecutionStatus"]
        if status in TERMINAL:
            return status, records, described.get("FailureReason") or None
        sleep(poll_seconds)


def run_remote(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    *,
    wait: bool = True,
    progress: Progress | None = None,
    session: boto3.Session | None = None,
    poll_seconds: float = 15,
) -> RunRecord:
    """Start the pipeline on SageMaker (and follow it unless `wait=False`); the record `sagegate runs` lists."""
    session = session or boto3.Session(region_name=project.region)
    began = time.monotonic()
    arn = start(config, project, session)
    execution_id = arn.rsplit("/", 1)[-1]
    record = RunRecord.starting(
        config,
        project,
        execution_id,
        parameters={name: source for name, (source, _) in config.data_inputs().items()},
        attempt=f"sagemaker-{execution_id}",
        platform="sagemaker",
        execution_arn=arn,
    )
    save_record(home.ensure(), record)
    if not wait:
        return record
    status, steps, reason = follow(session.client("sagemaker"), arn, progress, poll_seconds)
    record.status, record.steps, record.failure_reason = status, steps, reason
    record.duration_seconds = time.monotonic() - began
    save_record(home, record)
    return record
