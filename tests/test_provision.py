"""`sagegate provision endpoint`: local endpoints from the YAML settings plus CLI overrides, and the
AWS endpoint stack's rendered parameters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.local.endpoints import EndpointManager
from pipelines.provision import ProvisionError, provision_local, template_parameters, with_overrides
from pipelines.state import Project, StateHome
from pipelines.templates import render
from tests.conftest import MODELS
from tests.gate_fixtures import ROOT, breast_cancer, register_version

PROJECT = Project()


def test_local_serverless_endpoint_is_created_then_updated_blue_green(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    config = with_overrides(breast_cancer(), {"max_concurrency": 9, "memory_size_mb": 3072})
    first = register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
    created = provision_local(config, PROJECT, home, None)
    assert (created["EndpointStatus"], created["Version"], created["Updated"]) == ("InService", first, False)
    state = EndpointManager(home, PROJECT).snapshot()
    variant = state["endpoint_configs"][created["EndpointConfigName"]]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 9}
    second = register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
    updated = provision_local(config, PROJECT, home, second)
    assert updated["Updated"] and updated["Version"] == second
    assert updated["EndpointConfigName"] != created["EndpointConfigName"]


def test_local_realtime_endpoint_scales_to_zero_shape(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    config = with_overrides(breast_cancer(), {"deployment_type": "realtime", "max_instances": 3, "min_instances": 0})
    register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
    described = provision_local(config, PROJECT, home, None)
    assert described["EndpointName"] == "sagegate-development-breast-cancer-realtime"
    assert described["InferenceComponent"]["InferenceComponentStatus"] == "InService"
    variant = EndpointManager(home, PROJECT).snapshot()["endpoint_configs"][described["EndpointConfigName"]][
        "ProductionVariants"
    ][0]
    assert "ModelName" not in variant
    assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 3}


def _shape(state: dict) -> dict:
    """The local resources with per-deployment digests, ARNs' digests and timestamps taken out."""
    text = re.sub(r"-[0-9a-f]{8}\b", "-DIGEST", json.dumps(state, sort_keys=True))
    text = re.sub(r"/[0-9a-f]{12}/", "/EXECUTION/", text)  # each home registered its own training run
    return json.loads(re.sub(r'"(CreationTime|LastModifiedTime)": "[^"]*"', r'"\1": "T"', text))


@pytest.mark.parametrize("deployment_type", ["realtime", "serverless"])
def test_provision_and_the_gate_create_the_same_local_resources(tmp_path: Path, deployment_type: str) -> None:
    """One deploy flow: provision runs the gate's deploy branches, scale-out policy and alarm included."""
    from pipelines.local_gate import run_gate

    config = breast_cancer(f"deployment.type={deployment_type}", "deployment.max_instances=2")
    states = []
    for kind in ("gate", "provision"):
        home = StateHome(tmp_path / kind).ensure()
        version = register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
        if kind == "gate":
            assert run_gate(config, PROJECT, home, version).status == "SUCCEEDED"
        else:
            assert provision_local(config, PROJECT, home, version)["EndpointStatus"] == "InService"
        states.append(_shape(EndpointManager(home, PROJECT).snapshot()))
    gate, provisioned = states
    assert provisioned == gate
    # the role is the inference role the roles stack creates, for a hyphenated model too
    assert {m["ExecutionRoleArn"] for m in gate["models"].values()} == {PROJECT.inference_role_arn}
    if deployment_type == "realtime":
        policies = {p["PolicyType"] for p in gate["scaling_policies"].values()}
        assert policies == {"TargetTrackingScaling", "StepScaling"}
        assert [a["MetricName"] for a in gate["alarms"].values()] == ["NoCapacityInvocationFailures"]


def test_nothing_registered_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="nothing registered yet"):
        provision_local(breast_cancer(), PROJECT, StateHome(tmp_path / "state").ensure(), None)


def test_a_version_trained_with_other_libraries_is_not_provisioned(tmp_path: Path) -> None:
    """The evaluator's library check holds for `provision` too: it deploys without the gate."""
    import mlflow

    home = StateHome(tmp_path / "state").ensure()
    config = breast_cancer()
    version = register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    client.set_model_version_tag(PROJECT.registered_model(config.name), version, "library.scikit-learn", "1.2.1")
    with pytest.raises(ProvisionError, match=r"trained with scikit-learn 1\.2\.1, the serving image has scikit-learn"):
        provision_local(config, PROJECT, home, version)
    good = register_version(home, PROJECT, config, {"accuracy": 0.9, "f1": 0.9})
    with pytest.raises(ProvisionError, match=r"trained with scikit-learn 1\.2\.1"):  # an A/B variant too
        provision_local(config, PROJECT, home, None, {good: 0.5, version: 0.5})
    assert EndpointManager(home, PROJECT).snapshot()["endpoints"] == {}  # nothing was created


def test_aws_parameters_carry_the_overrides_and_render() -> None:
    config = with_overrides(
        breast_cancer("deployment.type=realtime"),
        {"max_instances": 4, "scale_in_cooldown": 900, "target_invocations": 20.0, "instance_type": "ml.c5.large"},
    )
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-breast-cancer/3"
    template, parameters = template_parameters(config, PROJECT, arn)
    assert template == "endpoint-realtime.yaml"
    assert parameters["MaxInstances"] == "4" and parameters["MinInstances"] == "0"
    assert parameters["ScaleInCooldown"] == "900" and parameters["TargetInvocationsPerInstance"] == "20.0"
    assert parameters["InstanceType"] == "ml.c5.large"
    rendered = render(template, parameters)
    assert rendered["Parameters"]["MaxInstances"]["Default"] == "4"


def test_ab_on_aws_is_the_two_variant_stack_from_the_yaml_or_ab(tmp_path: Path) -> None:
    variants = "deployment.variants=[{version: 3, weight: 0.8}, {version: 4, weight: 0.2}]"
    result = sagegate(
        "provision", "endpoint", "--model", "friedman1", "--target", "aws", "--set", variants,
        "--dry-run", "--render", str(tmp_path / "ab.json"), home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--template-file cloudformation/endpoint-ab.yaml" in result.stdout
    package = f"arn:aws:sagemaker:us-east-1:{PROJECT.account}:model-package/sagegate-development-friedman1"
    assert f"VariantAPackageArn={package}/3" in result.stdout and f"VariantBPackageArn={package}/4" in result.stdout
    rendered = json.loads((tmp_path / "ab.json").read_text())
    config = rendered["Resources"]["EndpointConfig"]["Properties"]
    weights = [(v["VariantName"]["Fn::Sub"], v["InitialVariantWeight"]["Ref"]) for v in config["ProductionVariants"]]
    assert weights == [("v${VariantAVersion}", "VariantAWeight"), ("v${VariantBVersion}", "VariantBWeight")]
    assert rendered["Parameters"]["VariantAWeight"]["Default"] == "0.8" and "KmsKeyId" in config  # instances: encrypted
    assert "ServerlessConfig" not in config["ProductionVariants"][0]
    serverless = sagegate(
        "provision", "endpoint", "--model", "breast-cancer", "--target", "aws", "--ab", "5=0.5,6=0.5",
        "--dry-run", "--render", str(tmp_path / "sl.json"), home=tmp_path,
    )  # fmt: skip
    assert serverless.returncode == 0, serverless.stderr
    config = json.loads((tmp_path / "sl.json").read_text())["Resources"]["EndpointConfig"]["Properties"]
    assert "KmsKeyId" not in config and config["ProductionVariants"][1]["ServerlessConfig"]["MaxConcurrency"]
    three = sagegate("provision", "endpoint", "--model", "friedman1", "--target", "aws", "--ab", "3=0.5,4=0.3,5=0.2",
                     "--dry-run", home=tmp_path)  # fmt: skip
    assert three.returncode == 1 and "two version numbers (got 3, 4, 5)" in three.stderr  # the stack has two variants


def test_a_shadow_test_on_aws_is_the_two_variant_stack_with_a_shadow_variant(tmp_path: Path) -> None:
    shadow = "deployment.shadow={version: 3, sampling_percentage: 25}"
    result = sagegate(
        "provision", "endpoint", "--model", "friedman1", "--target", "aws", "--version", "4", "--set", shadow,
        "--dry-run", "--render", str(tmp_path / "shadow.json"), home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "VariantBRole=shadow" in result.stdout and "VariantBWeight=0.25" in result.stdout
    assert "VariantAVersion=4" in result.stdout and "VariantBVersion=3" in result.stdout
    config = json.loads((tmp_path / "shadow.json").read_text())["Resources"]["EndpointConfig"]["Properties"]
    (production,) = config["ProductionVariants"]
    (mirrored,) = config["ShadowProductionVariants"]
    assert production["VariantName"] == {"Fn::Sub": "v${VariantAVersion}"} and production["InitialVariantWeight"] == 1
    assert mirrored["InitialVariantWeight"] == {"Ref": "VariantBWeight"}
    unnamed = sagegate("provision", "endpoint", "--model", "friedman1", "--target", "aws", "--set", shadow,
                       "--dry-run", home=tmp_path)  # fmt: skip
    assert unnamed.returncode == 1 and "names both version numbers" in unnamed.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deployment.type=serverless"], "shadow variants on instances"),
        (["deployment.variants=[{version: 3, weight: 1}, {version: 4, weight: 1}]"], "one production variant"),
        (["deployment.shadow.sampling_percentage=0"], "sampling_percentage"),
    ],
)
def test_bad_shadow_settings_are_refused_naming_the_rule(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(MODELS / "friedman1.yaml", ["deployment.shadow={version: champion}", *overrides])


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("[{version: 3, weight: 1}]", "two different versions"),
        ("[{version: 3, weight: 1}, {version: 3, weight: 1}]", "two different versions"),
        ("[{version: 3, weight: 0}, {version: 4, weight: 1}]", "weight"),
    ],
)
def test_bad_variants_are_refused_naming_the_rule(variants: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(MODELS / "friedman1.yaml", [f"deployment.variants={variants}"])
    with pytest.raises(ConfigError, match="replaced all at once"):
        two = "deployment.variants=[{version: 3, weight: 1}, {version: 4, weight: 1}]"
        load_config(MODELS / "friedman1.yaml", [two, "deployment.rollout.type=linear"])


def sagegate(*args: str, home: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "sagegate"
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "SAGEGATE_HOME": str(home)}
    )


def test_cli_dry_run_prints_the_stack_deploy_and_bad_overrides_exit_2(tmp_path: Path) -> None:
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/1"
    result = sagegate(
        "provision", "endpoint", "--model", "friedman1", "--target", "aws", "--model-package-arn", arn,
        "--max-instances", "2", "--dry-run", "--render", str(tmp_path / "t.json"), home=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--stack-name sagegate-development-friedman1-endpoint" in result.stdout and "MaxInstances=2" in result.stdout
    assert json.loads((tmp_path / "t.json").read_text())["Resources"]["NoCapacityAlarm"]
    bad = sagegate("provision", "endpoint", "--model", "breast-cancer", "--max-concurrency", "999", home=tmp_path)
    assert bad.returncode == 2 and "--max-concurrency" in bad.stderr
    unknown = sagegate("provision", "endpoint", "--model", "nope", home=tmp_path)
    assert unknown.returncode == 2 and "no model YAML named 'nope'" in unknown.stderr
