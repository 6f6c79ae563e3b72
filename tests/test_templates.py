"""The CloudFormation templates, rendered per environment, and created in moto where it can."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from pipelines.state import ENVIRONMENTS, Project
from pipelines.templates import EXAMPLE_PARAMETERS, TemplateError, render


def bucket(environment: str) -> dict:
    return render("training-bucket.yaml", {"Environment": environment})["Resources"]


def rules(environment: str) -> dict[str, dict]:
    resource = bucket(environment)["TrainingBucket"]
    return {
        rule["Prefix"]: rule for rule in resource["Properties"]["LifecycleConfiguration"]["Rules"] if "Prefix" in rule
    }


def test_development_expires_data_after_7_days_and_models_after_30() -> None:
    lifecycle = rules("development")
    assert lifecycle["training-data/"]["ExpirationInDays"] == 7
    assert lifecycle["models/"]["ExpirationInDays"] == 30
    resources = bucket("development")
    assert resources["TrainingBucket"]["DeletionPolicy"] == "Delete"
    assert "VersioningConfiguration" not in resources["TrainingBucket"]["Properties"]


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_staging_and_production_tier_data_keep_models_and_retain(environment: str) -> None:
    lifecycle = rules(environment)
    assert lifecycle["training-data/"]["Transitions"] == [
        {"StorageClass": "STANDARD_IA", "TransitionInDays": 30},
        {"StorageClass": "GLACIER", "TransitionInDays": 90},
    ]
    assert "models/" not in lifecycle  # models stay in Standard
    resources = bucket(environment)
    for name in ("TrainingBucket", "TrainingKey"):
        assert resources[name]["DeletionPolicy"] == "Retain"
        assert resources[name]["UpdateReplacePolicy"] == "Retain"
    assert resources["TrainingBucket"]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_bucket_is_encrypted_private_and_tls_only(environment: str) -> None:
    resources = bucket(environment)
    properties = resources["TrainingBucket"]["Properties"]
    encryption = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert all(properties["PublicAccessBlockConfiguration"].values())
    statement = resources["TrainingBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert properties["BucketName"] == {"Fn::Sub": "${Project}-${Environment}-training${GlobalNameSuffix}"}


def test_exports_use_the_documented_names() -> None:
    exports = {}
    for name in ("training-bucket.yaml", "iam-roles.yaml", "gate.yaml", "model.yaml"):
        for output in render(name, {"Environment": "staging", **EXAMPLE_PARAMETERS[name]}).get("Outputs", {}).values():
            if "Export" in output:
                exports[output["Export"]["Name"]["Fn::Sub"]] = output
    assert {
        "${Project}-${Environment}-training-bucket-name",
        "${Project}-${Environment}-training-bucket-arn",
        "${Project}-${Environment}-sagemaker-training-role-arn",
        "${Project}-${Environment}-sagemaker-inference-role-arn",
        "${Project}-${Environment}-deployment-gate-name",
        "${Project}-${Environment}-${ModelName}-pipeline-name",
    } <= set(exports)


def statements(template: dict) -> list[dict]:
    found = []
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        for policy in properties.get("Policies", []):
            found += policy["PolicyDocument"]["Statement"]
        if "PolicyDocument" in properties:
            found += properties["PolicyDocument"]["Statement"]
    return found


@pytest.mark.parametrize("template", ["iam-roles.yaml", "images.yaml"])
def test_roles_are_least_privilege(template: str) -> None:
    roles = render(template, {"Environment": "production", **EXAMPLE_PARAMETERS[template]})
    text = json.dumps(roles)
    assert "FullAccess" not in text and "ManagedPolicyArns" not in text
    for statement in statements(roles):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), statement
        if statement.get("Resource") == "*":  # only actions AWS offers no resource-level permission for
            assert all(
                a.startswith(("ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "xray:", "logs:"))
                for a in actions
            ), statement
    pass_role = [s for s in statements(roles) if s["Action"] == "iam:PassRole"]
    assert all(
        s["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}} for s in pass_role
    )
    if template != "iam-roles.yaml":
        return
    training_pass = next(s for s in pass_role if s["Sid"] == "PassOnlyItself")
    training_role = ":role/${Project}-${Environment}-sagemaker-training${GlobalNameSuffix}"
    assert training_pass["Resource"]["Fn::Sub"].endswith(training_role)


def test_realtime_endpoint_scales_to_zero_with_the_yaml_settings() -> None:
    parameters = {
        "Environment": "production",
        **EXAMPLE_PARAMETERS["endpoint-realtime.yaml"],
        "MinInstances": "0",
        "MaxInstances": "4",
        "ScaleInCooldown": "900",
        "ScaleOutCooldown": "30",
        "TargetInvocationsPerInstance": "25",
        "InstanceType": "ml.c5.xlarge",
    }
    template = render("endpoint-realtime.yaml", parameters)
    resources = template["Resources"]
    variant = resources["EndpointConfig"]["Properties"]["ProductionVariants"][0]
    assert "ModelName" not in variant
    assert variant["ManagedInstanceScaling"]["MinInstanceCount"] == {"Ref": "MinInstances"}
    assert "ExecutionRoleArn" in resources["EndpointConfig"]["Properties"]
    target = resources["ScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
    assert target["ResourceId"]["Fn::Sub"].startswith("inference-component/")
    tracking = resources["InvocationsTracking"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert (
        tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
        == "SageMakerInferenceComponentInvocationsPerCopy"
    )
    assert tracking["ScaleInCooldown"] == {"Ref": "ScaleInCooldown"}
    step = resources["ScaleOutFromZero"]["Properties"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    alarm = resources["NoCapacityAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SageMaker", "NoCapacityInvocationFailures")
    assert alarm["Dimensions"][0]["Name"] == "InferenceComponentName"
    assert alarm["AlarmActions"] == [{"Ref": "ScaleOutFromZero"}]
    assert {k: v["Default"] for k, v in template["Parameters"].items() if k in parameters}["MaxInstances"] == "4"


def test_schedules_are_weekly_training_and_daily_inference_with_flags() -> None:
    on = render("model.yaml", {"Environment": "staging", **EXAMPLE_PARAMETERS["model.yaml"]})
    assert on["Parameters"]["TrainingSchedule"]["Default"] == "cron(0 2 ? * SUN *)"
    assert on["Parameters"]["InferenceSchedule"]["Default"] == "cron(0 6 * * ? *)"
    assert on["Resources"]["WeeklyTraining"]["Properties"]["State"] == "ENABLED"
    assert on["Resources"]["DailyInference"]["Properties"]["State"] == "ENABLED"
    assert on["Resources"]["InferencePipeline"]["Properties"]["PipelineName"]["Fn::Sub"].endswith("-inference")
    target = on["Resources"]["WeeklyTraining"]["Properties"]["Target"]
    assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:sagemaker:startPipelineExecution"
    off = render(
        "model.yaml",
        {"Environment": "staging", **EXAMPLE_PARAMETERS["model.yaml"], "TrainingScheduleEnabled": "false"},
    )
    assert off["Resources"]["WeeklyTraining"]["Properties"]["State"] == "DISABLED"
    rule = on["Resources"]["RegisteredToGate"]["Properties"]
    assert rule["EventPattern"]["detail-type"] == ["SageMaker Model Package State Change"]


def test_rendering_refuses_unknown_parameters() -> None:
    with pytest.raises(TemplateError, match="Bogus"):
        render("training-bucket.yaml", {"Environment": "staging", "Bogus": "1"})


def test_gate_input_template_is_valid_json_with_the_model_settings() -> None:
    from pipelines.deploy_plan import gate_settings
    from tests.gate_fixtures import breast_cancer

    template = render("model.yaml", {"Environment": "staging", **EXAMPLE_PARAMETERS["model.yaml"]})
    text = template["Resources"]["RegisteredToGate"]["Properties"]["Targets"][0]["InputTransformer"]["InputTemplate"]
    filled = (
        text["Fn::Sub"]
        .replace("${ModelName}", "breast-cancer")
        .replace("${Project}", "sagegate")
        .replace("${Environment}", "staging")
        .replace("${GateSettings}", gate_settings(breast_cancer(), Project(environment="staging")))
        .replace("<version>", "3")
        .replace("<arn>", "arn:aws:sagemaker:us-east-1:1:model-package/x/3")
        .replace("<evaluation>", "s3://b/evaluation.json")
    )
    gate_input = json.loads(filled)
    assert gate_input["quality_gate"] == {"accuracy": {"min": 0.85}, "f1": {"min": 0.85}}
    assert gate_input["container"] == {"ModelPackageName": "arn:aws:sagemaker:us-east-1:1:model-package/x/3"}
    from tests.test_evaluator import app

    gate_input["evaluation_uri"] = "s3://b/evaluation.json"
    app.GateInput.model_validate(gate_input)  # the evaluator accepts exactly what the rule sends


def create_stack(name: str, template: str, parameters: dict[str, str]) -> dict:
    rendered = render(template, parameters)
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(rendered),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    return cloudformation.describe_stacks(StackName=name)["Stacks"][0]


@mock_aws
def test_bucket_and_roles_stacks_create_in_moto() -> None:
    bucket_stack = create_stack("sagegate-staging-training-bucket", "training-bucket.yaml", {"Environment": "staging"})
    assert bucket_stack["StackStatus"] == "CREATE_COMPLETE"
    s3 = boto3.client("s3", region_name="us-east-1")
    assert s3.get_bucket_encryption(Bucket="sagegate-staging-training")["ServerSideEncryptionConfiguration"]
    # moto ignores versioning, public-access-block and the bucket policy: asserted on the rendered template above
    exports = {e["Name"] for e in boto3.client("cloudformation", region_name="us-east-1").list_exports()["Exports"]}
    assert "sagegate-staging-training-bucket-arn" in exports
    roles_stack = create_stack("sagegate-staging-iam-roles", "iam-roles.yaml", {"Environment": "staging"})
    assert roles_stack["StackStatus"] == "CREATE_COMPLETE"
    iam = boto3.client("iam", region_name="us-east-1")
    names = {role["RoleName"] for role in iam.list_roles()["Roles"]}
    assert {
        "sagegate-staging-sagemaker-training",
        "sagegate-staging-sagemaker-inference",
        "sagegate-staging-gate-states",
        "sagegate-staging-gate-lambda",
        "sagegate-staging-scheduler",
    } <= names


@pytest.mark.parametrize(
    "project",
    [
        Project(),
        Project(prefix="acme-ml", environment="staging"),
        Project(region="eu-west-1", primary_region="us-east-1"),  # a second region: suffixed role names
    ],
)
def test_the_role_arns_project_builds_are_the_roles_the_template_creates(project: Project) -> None:
    roles = render("iam-roles.yaml", {"Project": project.prefix, "Environment": project.environment})
    created = {
        resource["Properties"]["RoleName"]["Fn::Sub"]
        .replace("${Project}", project.prefix)
        .replace("${Environment}", project.environment)
        .replace("${GlobalNameSuffix}", project.global_suffix)
        for resource in roles["Resources"].values()
        if resource["Type"] == "AWS::IAM::Role"
    }
    for arn in (project.training_role_arn, project.inference_role_arn):
        assert arn.startswith(f"arn:aws:iam::{project.account}:role/")
        assert arn.rpartition("/")[2] in created, (arn, created)


def test_the_runtime_image_repository_is_scanned_immutable_encrypted_and_pruned() -> None:
    project = Project(environment="staging")
    rendered = render("images.yaml", {"Environment": "staging", **EXAMPLE_PARAMETERS["images.yaml"]})["Resources"]
    repository = rendered["RuntimeRepository"]["Properties"]
    assert repository["RepositoryName"]["Fn::Sub"].replace("${Project}-${Environment}", "sagegate-staging") == (
        project.image_repository
    )
    assert repository["ImageTagMutability"] == "IMMUTABLE"  # a tag names one content (its hash)
    assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert repository["EncryptionConfiguration"]["EncryptionType"] == "KMS"
    rule = json.loads(repository["LifecyclePolicy"]["LifecyclePolicyText"])["rules"][0]
    assert rule["selection"]["countType"] == "imageCountMoreThan" and rule["action"] == {"type": "expire"}
    build = rendered["BuildProject"]["Properties"]
    assert build["Name"]["Fn::Sub"].replace("${Project}-${Environment}", "sagegate-staging") == (
        project.image_build_project
    )
    assert {v["Name"] for v in build["Environment"]["EnvironmentVariables"]} == {"REPOSITORY_URI", "IMAGE_TAG"}
    assert "docker push" in build["Source"]["BuildSpec"] and build["Artifacts"] == {"Type": "NO_ARTIFACTS"}
    # the SageMaker roles pull only this repository
    roles = render("iam-roles.yaml", {"Environment": "staging"})
    pulls = [s for s in statements(roles) if s.get("Sid") == "PullImages"]
    assert len(pulls) == 2 and all(s["Resource"]["Fn::Sub"].endswith(":repository/${Project}-${Environment}-runtime")
                                   for s in pulls)  # fmt: skip
