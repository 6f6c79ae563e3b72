"""`deployment.llm`: an LLM with a LoRA adapter on a scale-to-zero endpoint (AWS only), secrets never in YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from pipelines.config import ConfigError, load_config
from pipelines.templates import load
from tests.conftest import MODELS

ROOT = Path(__file__).resolve().parent.parent
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sagegate/hf-token-AbCdEf"
LLM = {
    "base_model": "meta-llama/Llama-3.1-8B-Instruct",
    "adapter_s3_uri": "s3://sagegate-development-training/adapters/assistant/adapter.tar.gz",
    "container_image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-gpu",
    "environment": {"SM_NUM_GPUS": "1", "MAX_INPUT_LENGTH": "4096", "LORA_ADAPTERS": "assistant"},
    "hf_token_secret_arn": SECRET,
}
FAKE_TOKEN = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3"


def write_config(folder: Path, llm: dict, **deployment: object) -> Path:
    config = yaml.safe_load((MODELS / "friedman1.yaml").read_text())
    config["name"] = "assistant"
    config["deployment"] = {**config.get("deployment", {}), "type": "realtime", "instance_type": "ml.g5.2xlarge",
                            **deployment, "llm": llm}  # fmt: skip
    path = folder / "assistant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sagegate(*args: str, build: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAGEGATE_BUILD_DIR": str(build)}
    command = [str(Path(sys.executable).parent / "sagegate"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.parametrize(
    ("llm", "field", "message"),
    [
        ({**LLM, "hf_token_secret_arn": FAKE_TOKEN}, "deployment.llm.hf_token_secret_arn", "literal token"),
        ({**LLM, "hf_token_secret_arn": "arn:aws:s3:::bucket/token"}, "deployment.llm.hf_token_secret_arn",
         "not a Secrets Manager ARN"),
        ({**LLM, "environment": {"HF_TOKEN": FAKE_TOKEN}}, "deployment.llm.environment", "HF_TOKEN: a secret in YAML"),
        ({**LLM, "environment": {"EXTRA": f"--token {FAKE_TOKEN}"}}, "deployment.llm.environment", "a secret in YAML"),
        ({**LLM, "environment": {"HF_MODEL_ID": "x/y"}}, "deployment.llm.environment", "deployment.llm.base_model"),
        ({**LLM, "adapter_s3_uri": "/home/me/adapter"}, "deployment.llm.adapter_s3_uri", ""),
    ],
)  # fmt: skip
def test_secrets_and_bad_values_are_refused_naming_the_field(llm: dict, field: str, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, llm))
    assert field in str(raised.value) and message in str(raised.value)
    assert FAKE_TOKEN not in str(raised.value)  # the error does not repeat the secret


def test_an_llm_endpoint_is_realtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deployment\.llm needs type: realtime"):
        load_config(write_config(tmp_path, LLM, type="serverless"))


def test_locally_provisioning_an_llm_endpoint_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, LLM)
    result = sagegate("provision", "endpoint", "--model", "assistant", "--config", str(config), "--target", "local",
                      build=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "LLM endpoints (deployment.llm) are AWS-only" in result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("llm")
    config = write_config(folder, LLM, min_instances=0, max_instances=2)
    result = sagegate(
        "provision", "endpoint", "--model", "assistant", "--config", str(config), "--target", "aws",
        "--dry-run", "--render", str(folder / "rendered.json"), build=folder,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((folder / "rendered.json").read_text()), folder


def test_two_inference_components_base_and_adapter(rendered) -> None:
    stdout, template, folder = rendered
    deployed = folder / "provision" / "sagegate-development-assistant-endpoint.json"
    assert f"--template-file {deployed}" in stdout and "--stack-name sagegate-development-assistant-endpoint" in stdout
    assert f"HfTokenSecretArn={SECRET}" in stdout
    resources = template["Resources"]
    base = resources["BaseComponent"]["Properties"]
    assert base["InferenceComponentName"] == {"Fn::Sub": "${Project}-${Environment}-${ModelName}-llm-base"}
    environment = base["Specification"]["Container"]["Environment"]
    assert environment["HF_MODEL_ID"] == {"Ref": "BaseModel"}
    assert environment["HF_TOKEN"] == {"Fn::Sub": "{{resolve:secretsmanager:${HfTokenSecretArn}}}"}
    assert {k: environment[k] for k in LLM["environment"]} == LLM["environment"]
    adapter = resources["AdapterComponent"]
    assert adapter["Type"] == "Custom::AdapterInferenceComponent"
    assert adapter["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["AdapterFunction", "Arn"]}
    assert adapter["Properties"]["InferenceComponentName"] == {
        "Fn::Sub": "${Project}-${Environment}-${ModelName}-llm-adapter"
    }
    assert adapter["Properties"]["BaseInferenceComponentName"] == base["InferenceComponentName"]
    assert template["Parameters"]["MinInstances"]["Default"] == "0"
    assert FAKE_TOKEN not in json.dumps(template)


def test_both_components_scale_to_zero_and_out_on_no_capacity(rendered) -> None:
    _, template, _ = rendered
    resources = template["Resources"]
    for component in ("Base", "Adapter"):
        suffix = component.lower()
        target = resources[f"{component}ScalableTarget"]["Properties"]
        assert target["ResourceId"] == {
            "Fn::Sub": f"inference-component/${{Project}}-${{Environment}}-${{ModelName}}-llm-{suffix}"
        }
        assert target["MinCapacity"] == {"Ref": "MinInstances"}
        assert target["ScalableDimension"] == "sagemaker:inference-component:DesiredCopyCount"
        tracking = resources[f"{component}InvocationsTracking"]["Properties"]
        assert tracking["PolicyType"] == "TargetTrackingScaling"
        assert tracking["TargetTrackingScalingPolicyConfiguration"]["ScaleInCooldown"] == {"Ref": "ScaleInCooldown"}
        alarm = resources[f"{component}NoCapacityAlarm"]["Properties"]
        assert alarm["MetricName"] == "NoCapacityInvocationFailures"
        assert alarm["AlarmActions"] == [{"Ref": f"{component}ScaleOutFromZero"}]
        assert alarm["Dimensions"][0]["Value"]["Fn::Sub"] == target["ResourceId"]["Fn::Sub"].removeprefix(
            "inference-component/"
        )


def test_the_deployed_template_passes_cfn_lint(rendered) -> None:
    _, _, folder = rendered
    deployed = folder / "provision" / "sagegate-development-assistant-endpoint.json"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(deployed), "--append-rules", "cfn_lint_serverless.rules"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def adapter_handler(monkeypatch: pytest.MonkeyPatch):
    """The custom resource's inline code, run with a recording cfnresponse and a stubbed SageMaker."""
    sent: list[dict] = []
    cfnresponse = types.ModuleType("cfnresponse")
    cfnresponse.SUCCESS, cfnresponse.FAILED = "SUCCESS", "FAILED"

    def send(event, context, status, data, physical_id=None, noEcho=False, reason=None):
        sent.append({"status": status, "data": data, "physical_id": physical_id, "reason": reason})

    cfnresponse.send = send
    monkeypatch.setitem(sys.modules, "cfnresponse", cfnresponse)
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    monkeypatch.setattr(boto3, "client", lambda *args, **kwargs: client)
    code = load("endpoint-llm.yaml")["Resources"]["AdapterFunction"]["Properties"]["Code"]["ZipFile"]
    namespace: dict = {}
    exec(compile(code, "index.py", "exec"), namespace)
    return namespace["handler"], Stubber(client), sent


EVENT = {
    "ResourceProperties": {
        "InferenceComponentName": "sagegate-development-assistant-llm-adapter",
        "BaseInferenceComponentName": "sagegate-development-assistant-llm-base",
        "EndpointName": "sagegate-development-assistant-llm",
        "AdapterS3Uri": LLM["adapter_s3_uri"],
    }
}


def test_the_custom_resource_creates_the_adapter_and_answers_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stubber, sent = adapter_handler(monkeypatch)
    name = EVENT["ResourceProperties"]["InferenceComponentName"]
    stubber.add_response(
        "create_inference_component",
        {"InferenceComponentArn": f"arn:aws:sagemaker:us-east-1:123456789012:inference-component/{name}"},
        {
            "InferenceComponentName": name,
            "EndpointName": "sagegate-development-assistant-llm",
            "VariantName": "AllTraffic",
            "Specification": {
                "BaseInferenceComponentName": "sagegate-development-assistant-llm-base",
                "Container": {"ArtifactUrl": LLM["adapter_s3_uri"]},
            },
        },
    )
    described = {
        "InferenceComponentName": name,
        "InferenceComponentArn": "arn:aws:sagemaker:us-east-1:123456789012:inference-component/x",
        "EndpointName": "e", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e",
        "CreationTime": "2026-11-29", "LastModifiedTime": "2026-11-29", "InferenceComponentStatus": "InService",
    }  # fmt: skip
    stubber.add_response("describe_inference_component", described, {"InferenceComponentName": name})
    with stubber:
        handler({**EVENT, "RequestType": "Create"}, Context())
    stubber.assert_no_pending_responses()
    assert sent == [
        {"status": "SUCCESS", "data": {"InferenceComponentName": name}, "physical_id": name, "reason": None}
    ]


def test_the_custom_resource_reports_failure_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stubber, sent = adapter_handler(monkeypatch)
    stubber.add_client_error("create_inference_component", "ValidationException", "base component not found")
    with stubber, pytest.raises(Exception, match="base component not found"):
        handler({**EVENT, "RequestType": "Create"}, Context())
    assert sent[0]["status"] == "FAILED" and "base component not found" in sent[0]["reason"]
    assert sent[0]["physical_id"] == EVENT["ResourceProperties"]["InferenceComponentName"]


def test_deleting_an_adapter_that_is_gone_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    handler, stubber, sent = adapter_handler(monkeypatch)
    stubber.add_client_error("delete_inference_component", "ValidationException", "Could not find inference component")
    with stubber:
        handler({**EVENT, "RequestType": "Delete", "PhysicalResourceId": "x"}, Context())
    assert [entry["status"] for entry in sent] == ["SUCCESS"]
