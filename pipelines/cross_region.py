"""Serve a model in another region than it was trained in.

SageMaker serves a Model Registry version only in its own region, and the model's artifact and image
must be there too. `replicate_model_package` copies the approved version into the target region: the
artifact into that region's training bucket, the image reference onto that region's runtime repository
(the same content-addressed tag: deploy.sh builds the identical image in every region it deploys), and
a model package in that region's group recording where it came from. Idempotent: a version already
replicated is found by that record and reused.
"""

from __future__ import annotations

from typing import Any

import boto3

from pipelines.state import Project

SOURCE_PROPERTY = "sagegate.source-model-package"


class ReplicationError(RuntimeError):
    """The source version cannot be replicated (not found, not approved, no artifact)."""


def arn_region(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 5 and parts[0] == "arn" else ""


def _existing(sagemaker: Any, group: str, source_arn: str) -> str | None:
    paginator = sagemaker.get_paginator("list_model_packages")
    for page in paginator.paginate(ModelPackageGroupName=group):
        for summary in page["ModelPackageSummaryList"]:
            described = sagemaker.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            if described.get("CustomerMetadataProperties", {}).get(SOURCE_PROPERTY) == source_arn:
                return summary["ModelPackageArn"]
    return None


def replicate_model_package(source_arn: str, model: str, project: Project) -> str:
    """The ARN of `source_arn`'s copy in `project.region` (made unless it exists)."""
    source_region = arn_region(source_arn)
    if not source_region:
        raise ReplicationError(f"{source_arn!r} is not a model package ARN")
    source = boto3.client("sagemaker", region_name=source_region)
    try:
        package = source.describe_model_package(ModelPackageName=source_arn)
    except source.exceptions.ClientError as error:
        raise ReplicationError(f"{source_arn}: {error}") from None
    if package.get("ModelApprovalStatus") != "Approved":
        raise ReplicationError(
            f"{source_arn} is {package.get('ModelApprovalStatus')}: only an approved version is served"
        )
    container = package["InferenceSpecification"]["Containers"][0]
    if "ModelDataUrl" not in container:
        raise ReplicationError(f"{source_arn} has no ModelDataUrl to copy")
    target = boto3.client("sagemaker", region_name=project.region)
    group = project.model_package_group(model)
    try:
        target.create_model_package_group(ModelPackageGroupName=group)
    except target.exceptions.ClientError as error:
        if "already exists" not in str(error):
            raise
    if existing := _existing(target, group, source_arn):
        return existing
    bucket, _, key = container["ModelDataUrl"].removeprefix("s3://").partition("/")
    version = source_arn.rsplit("/", 1)[-1]
    copied_key = f"models/{model}/replicated/{source_region}/{version}/model.tar.gz"
    boto3.client("s3", region_name=project.region).copy(
        {"Bucket": bucket, "Key": key}, project.bucket, copied_key,
        SourceClient=boto3.client("s3", region_name=source_region),
    )  # fmt: skip
    tag = container["Image"].rsplit(":", 1)[-1]
    specification = package["InferenceSpecification"]
    created = target.create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription=f"replica of {source_arn}",
        InferenceSpecification={
            "Containers": [{"Image": project.image_uri(tag), "ModelDataUrl": f"s3://{project.bucket}/{copied_key}"}],
            "SupportedContentTypes": specification.get("SupportedContentTypes", ["text/csv"]),
            "SupportedResponseMIMETypes": specification.get("SupportedResponseMIMETypes", ["application/json"]),
        },
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={SOURCE_PROPERTY: source_arn},
    )
    return created["ModelPackageArn"]
