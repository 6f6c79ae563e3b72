"""Every patch of third-party internals refuses a version it was not written for, and undoes itself."""

from __future__ import annotations

import pytest
from moto.s3.models import S3Backend
from moto.stepfunctions.parser.asl.parse import preprocessor
from stepfunctions.steps import Fail

from pipelines.local import pins, s3_patch, sdk_patch, sfn_patch
from pipelines.local.sfn_sdk_patch import cause_path


@pytest.fixture
def other_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pins, "version", lambda package: "9.9.9")


def test_the_installed_versions_are_the_pinned_ones() -> None:
    for package in pins.PINNED:
        pins.require(package)  # raises on a mismatch


def test_the_moto_patches_refuse_another_moto(other_versions: None, tmp_path) -> None:
    with pytest.raises(pins.PatchedVersionError, match=r"moto 5\.2\.5 internals; moto 9\.9\.9 is installed"):
        sfn_patch.install(None, {})  # type: ignore[arg-type]
    assert preprocessor.state_task_for is sfn_patch._original_state_task_for
    with pytest.raises(pins.PatchedVersionError, match="moto"):
        s3_patch.install(tmp_path)
    assert S3Backend.put_object is s3_patch._original_put


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
