"""SageMaker SDK sessions for the two ways a definition is used: exported for AWS, run locally.

Both opt out of SDK telemetry (it calls out on every run) and use the project bucket as the
default bucket, so uploaded code lands under the same keys in either mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

import boto3
from sagemaker.session_settings import SessionSettings
from sagemaker.workflow.pipeline_context import LocalPipelineSession, PipelineSession

from pipelines.state import Project

SDK_CONFIG: dict[str, Any] = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


def code_prefix(model: str) -> str:
    return f"training-code/{model}"


def aws_session(project: Project, model: str) -> PipelineSession:
    """For `pipeline.definition()`: run it under moto (or real AWS); it uploads step code."""
    from pipelines.local import sdk_patch

    sdk_patch.validate_config_once()
    return PipelineSession(
        boto_session=boto3.Session(region_name=project.region),
        default_bucket=project.bucket,
        default_bucket_prefix=code_prefix(model),
        sagemaker_config=SDK_CONFIG,
    )


def local_session(project: Project, model: str, container_root: Path) -> LocalPipelineSession:
    """Runs jobs through the SDK's local executor; code goes to (local) S3 as on AWS."""
    from pipelines.local import sdk_patch
    from pipelines.local.s3 import store_as_aws_does

    sdk_patch.install()
    session = LocalPipelineSession(
        boto_session=store_as_aws_does(boto3.Session(region_name=project.region)),
        default_bucket=project.bucket,
        disable_local_code=True,
        default_bucket_prefix=code_prefix(model),
    )
    session.sagemaker_config = SDK_CONFIG
    session.config = {"local": {"local_code": False, "container_root": str(container_root)}}
    # The local S3 has no KMS to name in `ServerSideEncryption: aws:kms` (the SDK's default for code
    # tarballs); on AWS the bucket's default encryption with the project key covers every object.
    session.settings = SessionSettings(encrypt_repacked_artifacts=False)
    return session
