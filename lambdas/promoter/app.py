"""Record a deployed version: MLflow alias `champion`, approval tag, and the Model Registry status.

Runs as the state machine's RecordChampion task, after the endpoint serves the new version.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import ValidationError, parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field

SERVICE = "sagegate-gate"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)


class PromotionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    container: dict[str, Any]
    registered_model: str = Field(min_length=1)
    version: str = Field(pattern=r"^[1-9][0-9]*$")
    model_package_arn: str | None = None
    endpoint_name: str = Field(min_length=1)
    execution_name: str = Field(min_length=1)
    champion_artifact_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    evaluation_uri: str | None = Field(None, pattern=r"^s3://[^/]+/.+")


def _copy(source: str, destination: str) -> None:
    # no ServerSideEncryption argument: the bucket's default encryption (the project's KMS key) applies,
    # where `aws:kms` without a key id would pick the AWS-managed key instead
    bucket, _, key = destination.removeprefix("s3://").partition("/")
    source_bucket, _, source_key = source.removeprefix("s3://").partition("/")
    boto3.client("s3").copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": source_bucket, "Key": source_key})


def publish_champion_artifact(request: PromotionInput) -> str:
    """Copy the champion's model.tar.gz to `models/{model}/champion/` for the daily batch pipeline."""
    source = request.container.get("ModelDataUrl")
    if not source and request.container.get("ModelPackageName"):
        package = boto3.client("sagemaker").describe_model_package(
            ModelPackageName=request.container["ModelPackageName"]
        )
        source = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    if not source:
        raise ValueError("container has neither ModelDataUrl nor ModelPackageName: no artifact to publish")
    _copy(source, request.champion_artifact_uri)
    return request.champion_artifact_uri


def publish_champion_monitoring(request: PromotionInput, tags: dict[str, str]) -> list[str]:
    """Copy the champion's monitoring baseline and evaluation report beside its artifact
    (`champion/baseline/`, `champion/evaluation.json`): what the scheduled drift monitor compares with."""
    folder = request.champion_artifact_uri.rsplit("/", 1)[0]
    copies = {}
    baseline = tags.get("monitoring.baseline_uri", "").rstrip("/")
    if baseline:
        copies.update(
            {f"{baseline}/{name}": f"{folder}/baseline/{name}" for name in ("statistics.json", "constraints.json")}
        )
    if request.evaluation_uri:
        copies[request.evaluation_uri] = f"{folder}/evaluation.json"
    for source, destination in copies.items():
        _copy(source, destination)
    return sorted(copies.values())


@logger.inject_lambda_context(correlation_id_path="execution_name", clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event=event, model=PromotionInput)
    except ValidationError as error:
        raise ValueError(f"bad promotion input: {error}") from None
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # never a store in the working directory
        raise ValueError("MLFLOW_TRACKING_URI is not set for this function: no model registry to record in")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    aliases = client.get_registered_model(request.registered_model).aliases or {}
    previous = str(aliases["champion"]) if "champion" in aliases else None
    client.set_registered_model_alias(request.registered_model, "champion", request.version)
    for key, value in {
        "approval_status": "Approved",
        "deployed.endpoint": request.endpoint_name,
        "deployed.execution": request.execution_name,
    }.items():
        client.set_model_version_tag(request.registered_model, request.version, key, value)
    if request.model_package_arn:
        boto3.client("sagemaker").update_model_package(
            ModelPackageArn=request.model_package_arn, ModelApprovalStatus="Approved"
        )
    champion_uri = publish_champion_artifact(request)
    tags = client.get_model_version(request.registered_model, request.version).tags or {}
    monitoring = publish_champion_monitoring(request, tags)
    result = {
        "registered_model": request.registered_model,
        "champion": request.version,
        "previous": previous,
        "champion_artifact": champion_uri,
        "champion_monitoring": monitoring,
    }
    logger.info("champion recorded", extra=result)
    return result
