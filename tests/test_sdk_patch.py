"""The SDK patch: pinned version, expected internals, and the runner it launches.

If a sagemaker upgrade moves or reshapes a patched internal, these fail first.
"""

from __future__ import annotations

import sys

import pytest
import sagemaker
from sagemaker.local import image

from pipelines.local import sdk_patch
from pipelines.local.pins import PINNED


def test_sagemaker_is_the_pinned_version_and_below_3():
    assert sagemaker.__version__ == PINNED["sagemaker"]
    assert int(sagemaker.__version__.split(".")[0]) < 3


def test_install_replaces_only_the_compose_hooks():
    sdk_patch.install()
    sdk_patch.install()  # idempotent
    container = image._SageMakerContainer.__new__(image._SageMakerContainer)
    container.container_root = "/tmp/job"
    command = container._compose()
    assert command == [sys.executable, "-m", "pipelines.local.container", "/tmp/job/docker-compose.yaml"]
    assert image._SageMakerContainer._get_compose_cmd_prefix() == []
    assert image._ecr_login_if_needed(None, "some/image") is False
    # the rest of the job machinery is the SDK's own
    for name in ("process", "train", "_generate_compose_file", "_prepare_processing_volumes", "retrieve_artifacts"):
        assert getattr(image._SageMakerContainer, name).__module__ == "sagemaker.local.image"


def test_detached_serving_is_refused():
    container = image._SageMakerContainer.__new__(image._SageMakerContainer)
    container.container_root = "/tmp/job"
    with pytest.raises(NotImplementedError):
        sdk_patch._compose(container, detached=True)


def test_a_reshaped_internal_is_detected(monkeypatch):
    def _compose(self, detached, extra):  # what an upgrade might do
        return []

    monkeypatch.setattr(image._SageMakerContainer, "_compose", _compose)
    with pytest.raises(sdk_patch.SdkPatchError, match="_compose takes"):
        sdk_patch.check_sdk()


def test_a_removed_internal_is_detected(monkeypatch):
    monkeypatch.delattr(image, "_ecr_login_if_needed")
    with pytest.raises(sdk_patch.SdkPatchError, match="_ecr_login_if_needed is gone"):
        sdk_patch.check_sdk()


def test_the_sdk_defaults_are_validated_once_per_distinct_config_and_still_refused_when_invalid(monkeypatch):
    from sagemaker.utils import get_sagemaker_config_value

    sdk_patch.install()
    checks: list[dict] = []
    monkeypatch.setattr(sdk_patch, "_original_validate", lambda config: checks.append(config))
    monkeypatch.setattr(sdk_patch, "_validated", set())

    class Session:
        def __init__(self, config: dict) -> None:
            self.sagemaker_config = config

    good = Session({"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    for _ in range(50):
        assert get_sagemaker_config_value(good, "SageMaker.PythonSDK.Modules.TelemetryOptOut") is True
    assert len(checks) == 1
    monkeypatch.undo()
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        get_sagemaker_config_value(Session({"SchemaVersion": "1.0", "NotAKey": {}}), "SageMaker.PythonSDK")
