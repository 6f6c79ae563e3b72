"""Every patch of third-party internals refuses a version it was not written for, and undoes itself."""

from __future__ import annotations

import pytest
from moto.cloudformation.models import CloudFormationBackend
from moto.stepfunctions.parser.asl.parse import preprocessor
from stepfunctions.steps import Fail

from pipelines.local import cfn_patch, pins, sdk_patch, sfn_patch
from pipelines.local.sfn_sdk_patch import cause_path


@pytest.fixture
def other_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pins, "version", lambda package: "9.9.9")


def test_the_installed_versions_are_the_pinned_ones() -> None:
    for package in pins.PINNED:
        pins.require(package)  # raises on a mismatch


def test_the_moto_patches_refuse_another_moto(other_versions: None) -> None:
    with pytest.raises(pins.PatchedVersionError, match=r"moto 5\.2\.5 internals; moto 9\.9\.9 is installed"):
        sfn_patch.install(None, {})  # type: ignore[arg-type]
    assert preprocessor.state_task_for is sfn_patch._original_state_task_for
    with pytest.raises(pins.PatchedVersionError, match="moto"):
        cfn_patch.install()
    assert CloudFormationBackend.execute_change_set is cfn_patch._original_execute


EXPORTING = """
Resources:
  Queue: {Type: AWS::SQS::Queue, Properties: {QueueName: !Ref Name}}
Parameters:
  Name: {Type: String}
  Retention: {Type: Number, Default: 60}
Outputs:
  QueueArn: {Value: !GetAtt Queue.Arn, Export: {Name: !Sub "${Name}-arn"}}
"""
IMPORTING = """
Resources:
  Topic: {Type: AWS::SNS::Topic, Properties: {TopicName: !Select [5, !Split [":", !ImportValue shared-arn]]}}
"""


def deploy(cloudformation, stack: str, body: str, parameters: dict[str, str], kind: str) -> dict:
    """What `aws cloudformation deploy` does: a change set, waited for, executed unless empty."""
    names = [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]
    if kind == "UPDATE":  # the CLI sends every other template parameter as UsePreviousValue
        names += [{"ParameterKey": "Retention", "UsePreviousValue": True}] if "Retention" in body else []
    change_set = cloudformation.create_change_set(
        StackName=stack, ChangeSetName=f"c{len(cloudformation.list_change_sets(StackName=stack)['Summaries'])}"
        if kind == "UPDATE" else "c0", TemplateBody=body, Parameters=names, ChangeSetType=kind,
    )  # fmt: skip
    described = cloudformation.describe_change_set(ChangeSetName=change_set["Id"])
    if described["Status"] == "CREATE_COMPLETE":
        cloudformation.execute_change_set(ChangeSetName=change_set["Id"])
    return described


def test_change_sets_publish_exports_and_an_unchanged_redeploy_is_empty() -> None:
    import boto3
    from moto import mock_aws

    cfn_patch.install()
    try:
        with mock_aws():
            cloudformation = boto3.client("cloudformation", region_name="us-east-1")
            deploy(cloudformation, "shared", EXPORTING, {"Name": "shared"}, "CREATE")
            exports = {e["Name"]: e["Value"] for e in cloudformation.list_exports()["Exports"]}
            assert exports["shared-arn"] == "arn:aws:sqs:us-east-1:123456789012:shared"
            deploy(cloudformation, "user", IMPORTING, {}, "CREATE")  # an import by a change-set stack
            assert (
                boto3.client("sns", region_name="us-east-1").list_topics()["Topics"][0]["TopicArn"].endswith(":shared")
            )
            again = deploy(cloudformation, "shared", EXPORTING, {"Name": "shared"}, "UPDATE")
            assert again["Status"] == "FAILED" and "didn't contain changes" in again["StatusReason"]
            deploy(cloudformation, "solo", EXPORTING, {"Name": "solo"}, "CREATE")  # exported, imported by none
            renamed = EXPORTING.replace("-arn", "-queue-arn")
            changed = deploy(cloudformation, "solo", renamed, {"Name": "solo"}, "UPDATE")
            assert changed["Status"] == "CREATE_COMPLETE"
            exports = {e["Name"] for e in cloudformation.list_exports()["Exports"]}
            assert "solo-queue-arn" in exports and "solo-arn" not in exports  # a renamed export is replaced
    finally:
        cfn_patch.uninstall()
    with mock_aws():  # unpatched moto publishes no export from a change set: why the patch exists
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        deploy(cloudformation, "shared", EXPORTING, {"Name": "shared"}, "CREATE")
        assert "Exports" not in cloudformation.list_exports() or not cloudformation.list_exports()["Exports"]


def test_the_sdk_patch_refuses_another_sagemaker(other_versions: None) -> None:
    with pytest.raises(pins.PatchedVersionError, match=r"sagemaker 2\.257\.7 internals"):
        sdk_patch.install()


def test_the_stepfunctions_fields_refuse_another_sdk(other_versions: None) -> None:
    with pytest.raises(pins.PatchedVersionError, match=r"stepfunctions 2\.3\.0"):
        cause_path(Fail("Failed"), "$.cause")


def test_the_stepfunctions_fields_serialise_as_asl() -> None:
    assert cause_path(Fail("Failed", error="E"), "$.error.Cause").to_dict() == {
        "Type": "Fail",
        "Error": "E",
        "CausePath": "$.error.Cause",
    }


def test_the_botocore_patch_refuses_another_botocore(other_versions: None) -> None:
    import botocore.session

    from pipelines.local import botocore_patch

    botocore_patch.uninstall()
    with pytest.raises(pins.PatchedVersionError, match=r"botocore 1\.44\.5 internals"):
        botocore_patch.install()
    assert botocore.session.create_loader is botocore_patch._original_create_loader


def test_every_botocore_session_shares_one_loader_that_parses_each_file_once() -> None:
    import botocore.loaders
    import botocore.session

    from pipelines.local import botocore_patch

    botocore_patch.uninstall()
    apart = [botocore.session.Session().get_component("data_loader") for _ in range(2)]
    assert apart[0] is not apart[1]  # botocore's own behaviour: a loader per session
    botocore_patch.install()
    try:
        sessions = [botocore.session.Session() for _ in range(3)]
        loaders = {id(session.get_component("data_loader")) for session in sessions}
        assert len(loaders) == 1
        models = [session.get_service_model("sagemaker") for session in sessions]
        assert models[0]._service_description is models[2]._service_description  # parsed once
        assert isinstance(sessions[0].get_component("data_loader"), botocore.loaders.Loader)
    finally:
        botocore_patch.uninstall()


def test_the_gate_interpreter_imports_without_moto_batch_and_ec2() -> None:
    """moto's ASL parser imports moto.batch for one enum; sfn_patch imports it with that package's
    __init__ skipped (53 MB of EC2 instance types). A fresh interpreter shows what the import loads."""
    import subprocess
    import sys

    probe = (
        "import sys; import pipelines.local.sfn_patch; "
        "print('moto.ec2' in sys.modules, 'moto.batch' in sys.modules, 'moto.batch.utils' in sys.modules); "
        "import moto.batch; print(hasattr(moto.batch, 'batch_backends'))"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert shown == ["False", "False", "True", "True"]  # no EC2; the real package still imports in full later
