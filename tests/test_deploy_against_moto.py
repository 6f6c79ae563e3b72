"""`scripts/deploy.sh development`, end to end, with the real AWS CLI against a moto server.

Two deploys share one server: the first creates everything in dependency order, the second must
change nothing. moto stands in for what it emulates; for the two things it does not do, the test
does them, openly: it creates the CodeBuild project (moto's CloudFormation skips that type) and,
after the first build, pushes the image tag into ECR (moto's CodeBuild does not run buildspecs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from pipelines.containers import image_tag
from pipelines.cross_region import replicate_model_package
from pipelines.state import Project
from pipelines.templates import render
from tests.moto_server import moto_server

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Project()
TEMPLATES = {  # stack → template, in the order deploy.sh must create them
    PROJECT.stack_name("training-bucket"): "training-bucket.yaml",
    PROJECT.stack_name("iam-roles"): "iam-roles.yaml",
    PROJECT.stack_name("images"): "images.yaml",
    PROJECT.stack_name("gate"): "gate.yaml",
    PROJECT.stack_name("breast-cancer-tuned"): "model.yaml",  # its pipeline has a TuningStep
    PROJECT.stack_name("breast-cancer"): "model.yaml",
    PROJECT.stack_name("friedman1"): "model.yaml",
}
# Resource types moto 5.2.5's CloudFormation does not create (it warns and goes on). Everything
# else in every template must exist after the deploy; a moto upgrade that adds one fails this list.
SKIPPED_BY_MOTO = {
    "AWS::S3::BucketPolicy",
    "AWS::CodeBuild::Project",
    "AWS::IAM::RolePolicy",
    "AWS::SageMaker::Pipeline",
    "AWS::Scheduler::Schedule",
    "AWS::SQS::QueuePolicy",
}
LOG_GROUP = "AWS::Logs::LogGroup"
MLFLOW_ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/sagegate-development"


CODEBUILD_PROJECT = {
    "source": {"type": "S3", "location": "unused"},
    "artifacts": {"type": "NO_ARTIFACTS"},
    "environment": {
        "type": "LINUX_CONTAINER",
        "image": "aws/codebuild/standard:7.0",
        "computeType": "BUILD_GENERAL1_MEDIUM",
    },
    "serviceRole": "arn:aws:iam::123456789012:role/unused",
}


def with_cli(environment: dict[str, str]) -> dict[str, str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEGATE_"))}
    variables.update(environment)
    # the project's AWS CLI (setup.cfg's test extra) and nothing else of this machine's
    variables["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return variables


def deploy(environment: dict[str, str], build: Path, *args: str) -> subprocess.CompletedProcess:
    variables = with_cli(environment)
    variables["SAGEGATE_BUILD_DIR"] = str(build)
    variables["SAGEGATE_MLFLOW_TRACKING_SERVER_ARN"] = MLFLOW_ARN
    command = [str(ROOT / "scripts" / "deploy.sh"), "development", *args]
    return subprocess.run(command, capture_output=True, text=True, env=variables, cwd=ROOT)


def sagegate(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "sagegate"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=with_cli(environment), cwd=ROOT)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    build = tmp_path_factory.mktemp("build")
    with moto_server() as environment, pytest.MonkeyPatch.context() as patch:
        for key, value in environment.items():
            patch.setenv(key, value)
        boto3.client("codebuild").create_project(  # the stack's project, which moto does not create
            name=PROJECT.image_build_project,
            source={"type": "S3", "location": "unused"},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/standard:7.0",
                "computeType": "BUILD_GENERAL1_MEDIUM",
            },
            serviceRole="arn:aws:iam::123456789012:role/unused",
        )
        first = deploy(environment, build)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr
        cloudformation = boto3.client("cloudformation")
        after_first = {s["StackName"]: s for s in cloudformation.describe_stacks()["Stacks"]}
        boto3.client("ecr").put_image(  # what the buildspec's `docker push` does on AWS
            repositoryName=PROJECT.image_repository,
            imageManifest=json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64}, "layers": []}),
            imageManifestMediaType="application/vnd.docker.distribution.manifest.v2+json",
            imageTag=image_tag(),
        )
        second = deploy(environment, build)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr
        yield {
            "first": first,
            "second": second,
            "after_first": after_first,
            "build": build / "deploy" / "development",
            "environment": environment,
        }


def test_stacks_are_created_in_dependency_order_and_their_outputs_printed(deployed) -> None:
    stacks = deployed["after_first"]
    assert set(stacks) == set(TEMPLATES)
    created = sorted(stacks, key=lambda name: stacks[name]["CreationTime"])
    assert created == list(TEMPLATES)
    assert all(stack["StackStatus"] == "CREATE_COMPLETE" for stack in stacks.values())
    output = deployed["first"].stdout
    exports = {e["Name"]: e.get("Value") for e in boto3.client("cloudformation").list_exports()["Exports"]}
    assert exports["sagegate-development-training-bucket-name"] == "sagegate-development-training"
    printed = ("training-bucket-name", "gate-lambda-role-arn", "runtime-repository-uri", "deployment-gate-arn")
    for name in (f"sagegate-development-{export}" for export in printed):
        assert name in exports and exports[name] in output  # printed by the outputs table
    assert "building sagegate-development-runtime:" in output and f"{image_tag()} built" in output
    assert "done: development deployed" in output


def test_every_resource_exists_except_the_types_moto_skips(deployed) -> None:
    cloudformation = boto3.client("cloudformation")
    skipped: set[str] = set()
    for stack_name, template in TEMPLATES.items():
        stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        expected = render(template, parameters)["Resources"]  # conditions resolved for these parameters
        summaries = cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
        present = {summary["LogicalResourceId"] for summary in summaries} - {""}  # moto: skipped ones, nameless
        assert present <= set(expected)
        for name in set(expected) - present:
            kind = expected[name]["Type"]
            if kind != LOG_GROUP:
                assert kind in SKIPPED_BY_MOTO, f"{stack_name}: {name} ({kind}) missing"
                skipped.add(kind)
    assert skipped == SKIPPED_BY_MOTO
    # moto creates log groups but does not always list them as stack resources: asked by name instead
    groups = {group["logGroupName"] for group in boto3.client("logs").describe_log_groups()["logGroups"]}
    assert {
        "/aws/lambda/sagegate-development-gate-evaluator",
        "/aws/lambda/sagegate-development-gate-promoter",
        "/aws/vendedlogs/states/sagegate-development-deployment-gate",
    } <= groups


def test_the_functions_and_artifacts_are_the_ones_the_plan_built(deployed) -> None:
    s3 = boto3.client("s3")
    functions = boto3.client("lambda")
    gate = boto3.client("cloudformation").describe_stacks(StackName=PROJECT.stack_name("gate"))["Stacks"][0]
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in gate["Parameters"]}
    definition = s3.get_object(Bucket=PROJECT.bucket, Key=parameters["DefinitionKey"])["Body"].read()
    assert definition == (deployed["build"] / "gate.asl.json").read_bytes()
    for kind, key in (("evaluator", "EvaluatorCodeKey"), ("promoter", "PromoterCodeKey")):
        package = s3.get_object(Bucket=PROJECT.bucket, Key=parameters[key])["Body"].read()
        assert package == (deployed["build"] / "lambdas" / f"{kind}.zip").read_bytes()
        function = functions.get_function(FunctionName=f"sagegate-development-gate-{kind}")["Configuration"]
        assert function["Runtime"] == "python3.12"
        assert function["Environment"]["Variables"]["MLFLOW_TRACKING_URI"] == MLFLOW_ARN
    context = s3.head_object(Bucket=PROJECT.bucket, Key=f"images/runtime-{image_tag()}.zip")
    exports = {e["Name"]: e.get("Value") for e in boto3.client("cloudformation").list_exports()["Exports"]}
    # the bucket default names the project key (an upload saying `aws:kms` alone would get aws/s3)
    assert context["ServerSideEncryption"] == "aws:kms"
    assert context["SSEKMSKeyId"] == exports["sagegate-development-training-key-arn"]


def test_only_models_that_capture_get_the_drift_monitor_and_its_code(deployed) -> None:
    cloudformation, s3 = boto3.client("cloudformation"), boto3.client("s3")

    def parameters(model: str) -> dict[str, str]:
        stack = cloudformation.describe_stacks(StackName=PROJECT.stack_name(model))["Stacks"][0]
        return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}

    assert parameters("breast-cancer")["MonitoringPipelineDefinitionKey"] == ""
    friedman1 = parameters("friedman1")
    assert friedman1["MonitoringSchedule"] == "rate(1 hour)"
    key = friedman1["MonitoringPipelineDefinitionKey"]
    assert key.startswith("pipelines/friedman1/monitoring-")
    definition = json.loads(s3.get_object(Bucket=PROJECT.bucket, Key=key)["Body"].read())
    (step,) = definition["Steps"]
    assert step["Name"] == "MonitorDrift"
    inputs = [i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]]
    for uri in inputs:  # the step's code and the statistics library are in the bucket before any run
        if "/training-code/" in uri:
            s3.head_object(Bucket=PROJECT.bucket, Key=uri.split(f"{PROJECT.bucket}/", 1)[1])
    resources = render("model.yaml", friedman1)["Resources"]
    assert {"MonitoringPipeline", "DriftMonitoring"} <= set(resources)


def test_a_second_deploy_changes_nothing(deployed) -> None:
    output = deployed["second"].stdout
    for stack in TEMPLATES:
        assert f"No changes to deploy. Stack {stack} is up to date" in output
    assert "Successfully created/updated stack" not in output
    assert "aws s3 cp" not in output  # every artifact is content-addressed and already there
    assert f"image sagegate-development-runtime:{image_tag()} exists: not rebuilt" in output
    assert output.count("exists: not rebuilt") == 3  # the image and both Lambda packages
    stacks = {s["StackName"]: s for s in boto3.client("cloudformation").describe_stacks()["Stacks"]}
    for name, before in deployed["after_first"].items():
        assert stacks[name].get("LastUpdatedTime") == before.get("LastUpdatedTime")


@pytest.fixture(scope="module")
def second_region(deployed, tmp_path_factory: pytest.TempPathFactory):
    """The same environment deployed to eu-west-1 too, us-east-1 being the primary region."""
    environment = {**deployed["environment"], "SAGEGATE_PRIMARY_REGION": "us-east-1"}
    boto3.client("codebuild", region_name="eu-west-1").create_project(
        name=PROJECT.image_build_project, **CODEBUILD_PROJECT
    )
    result = deploy(environment, tmp_path_factory.mktemp("build"), "--region", "eu-west-1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return environment


def test_a_second_region_gets_its_own_stacks_with_regional_global_names(second_region) -> None:
    europe = Project(region="eu-west-1", primary_region="us-east-1")
    assert europe.bucket == "sagegate-development-training-eu-west-1"
    buckets = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert {PROJECT.bucket, europe.bucket} <= buckets
    roles = {r["RoleName"] for r in boto3.client("iam").list_roles()["Roles"]}  # IAM names are account-wide
    assert {"sagegate-development-sagemaker-training", "sagegate-development-sagemaker-training-eu-west-1"} <= roles
    exports = {
        e["Name"]: e.get("Value")
        for e in boto3.client("cloudformation", region_name="eu-west-1").list_exports()["Exports"]
    }
    assert exports["sagegate-development-training-bucket-name"] == europe.bucket  # same export name, its region's value
    assert exports["sagegate-development-sagemaker-inference-role-arn"] == europe.inference_role_arn
    stacks = boto3.client("cloudformation", region_name="eu-west-1").describe_stacks()["Stacks"]
    assert {s["StackName"] for s in stacks} == set(TEMPLATES)


def test_a_version_trained_in_one_region_is_replicated_to_serve_in_another(second_region) -> None:
    """Registered in us-east-1, served from eu-west-1: artifact, image and package replicated there."""
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    group = PROJECT.model_package_group("friedman1")
    sagemaker.create_model_package_group(ModelPackageGroupName=group)
    artifact = b"model artifact bytes"
    boto3.client("s3").put_object(Bucket=PROJECT.bucket, Key="models/friedman1/v1/model.tar.gz", Body=artifact)
    source_arn = sagemaker.create_model_package(
        ModelPackageGroupName=group,
        InferenceSpecification={
            "Containers": [
                {
                    "Image": PROJECT.image_uri(image_tag()),
                    "ModelDataUrl": f"s3://{PROJECT.bucket}/models/friedman1/v1/model.tar.gz",
                }
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        ModelApprovalStatus="Approved",
    )["ModelPackageArn"]
    europe = Project(region="eu-west-1", primary_region="us-east-1")
    replica = replicate_model_package(source_arn, "friedman1", europe)
    assert replicate_model_package(source_arn, "friedman1", europe) == replica  # found again, not copied twice
    assert replica.startswith(f"arn:aws:sagemaker:eu-west-1:123456789012:model-package/{group}/")
    described = boto3.client("sagemaker", region_name="eu-west-1").describe_model_package(ModelPackageName=replica)
    assert described["ModelApprovalStatus"] == "Approved"
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == europe.image_uri(image_tag())  # the same image, from its region's repository
    bucket, _, key = container["ModelDataUrl"].removeprefix("s3://").partition("/")
    assert bucket == europe.bucket
    copied = boto3.client("s3", region_name="eu-west-1").get_object(Bucket=bucket, Key=key)
    assert copied["Body"].read() == artifact and copied["ServerSideEncryption"] == "aws:kms"
    exports = boto3.client("cloudformation", region_name="eu-west-1").list_exports()["Exports"]
    key_arn = {e["Name"]: e.get("Value") for e in exports}["sagegate-development-training-key-arn"]
    assert copied["SSEKMSKeyId"] == key_arn  # the destination region's project key, by the bucket default
    # the CLI: replicate, then deploy the endpoint stack in eu-west-1 (dry run: moto 5.2.5's SageMaker
    # CloudFormation cannot create endpoint stacks: MemorySizeInMB as a string, KeyError on ModelName)
    command = ["provision", "endpoint", "--model", "friedman1", "--target", "aws", "--region", "eu-west-1",
               "--model-package-arn", source_arn, "--dry-run"]  # fmt: skip
    result = sagegate(second_region, *command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"+ replicate {source_arn} into eu-west-1" in result.stdout
    assert (
        "aws cloudformation deploy --region eu-west-1 --stack-name sagegate-development-friedman1-endpoint"
        in result.stdout
    )
