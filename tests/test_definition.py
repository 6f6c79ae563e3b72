"""The pipeline definition: offline, deterministic, and local mode differs only in the registry step."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.definition import REGISTER_STEP, definition_json
from pipelines.state import Project
from tests.conftest import MODELS


@pytest.fixture(scope="module")
def config():
    return load_config(MODELS / "breast-cancer.yaml")


@pytest.fixture(scope="module")
def aws(config):
    return json.loads(definition_json(config, Project()))


def steps_by_name(definition: dict) -> dict:
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            for inner in step.get("Arguments", {}).get(branch, []):
                found[inner["Name"]] = inner
    return found


def test_structure_parameters_and_gate(aws):
    steps = steps_by_name(aws)
    assert {
        "PreprocessData",
        "TrainModel",
        "EvaluateModel",
        "CheckQualityGate",
        "RegisterMlflowModel",
        "QualityGateFailed",
        f"{REGISTER_STEP}-RegisterModel",
    } <= set(steps)
    names = {p["Name"] for p in aws["Parameters"]}
    assert {
        "InputDataUri",
        "TrainingInstanceType",
        "ProcessingInstanceType",
        "HpMaxDepth",
        "HpNEstimators",
        "AccuracyMin",
        "F1Min",
        "MlflowTrackingUri",
    } <= names
    conditions = steps["CheckQualityGate"]["Arguments"]["Conditions"]
    assert {c["LeftValue"]["Std:JsonGet"]["Path"] for c in conditions} == {"metrics.accuracy.value", "metrics.f1.value"}
    message = json.dumps(steps["QualityGateFailed"]["Arguments"]["ErrorMessage"])
    assert "accuracy=" in message and "f1=" in message and "Parameters.AccuracyMin" in message
    hyperparameters = steps["TrainModel"]["Arguments"]["HyperParameters"]
    assert hyperparameters["max_depth"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.HpMaxDepth"}]}}
    package = steps[f"{REGISTER_STEP}-RegisterModel"]["Arguments"]
    assert package["ModelPackageGroupName"] == "sagegate-development-breast-cancer"
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["ContentType"] == "application/json"


def test_bucket_key_layout(aws):
    text = json.dumps(aws)
    for prefix in ("training-data/", "training-code/breast-cancer", "models/breast-cancer", "evaluation"):
        assert prefix in text
    assert "s3://sagegate-development-training/training-data/breast-cancer/data.csv" in text


def test_definition_is_deterministic(config, aws):
    assert json.loads(definition_json(config, Project())) == aws


def test_local_definition_differs_only_in_the_registry_step(config, aws):
    local = json.loads(definition_json(config, Project(), local=True))
    aws = copy.deepcopy(aws)
    gate = next(s for s in aws["Steps"] if s["Name"] == "CheckQualityGate")
    removed = [s for s in gate["Arguments"]["IfSteps"] if s["Name"].startswith(REGISTER_STEP)]
    assert len(removed) == 1
    gate["Arguments"]["IfSteps"].remove(removed[0])
    assert local == aws


def test_console_script_needs_no_credentials_and_no_network(config, aws, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HOME": str(tmp_path)})
    out = tmp_path / "definition.json"
    subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "get-pipeline-definition"),
            str(MODELS / "breast-cancer.yaml"),
            "-f",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    assert json.loads(out.read_text()) == aws


def test_model_package_carries_its_mlflow_version(aws):
    """The gate is triggered by the package on AWS and checks the MLflow version: the package says which."""
    register = next(
        s
        for s in next(s for s in aws["Steps"] if s["Name"] == "CheckQualityGate")["Arguments"]["IfSteps"]
        if s["Name"].startswith("RegisterModelPackage")
    )
    metadata = register["Arguments"]["CustomerMetadataProperties"]
    assert metadata["mlflow_registered_model"] == "sagegate-development-breast-cancer"
    assert metadata["mlflow_version"] == {
        "Std:JsonGet": {
            "Path": "version",
            "PropertyFile": {"Get": "Steps.RegisterMlflowModel.PropertyFiles.Registration"},
        }
    }


SPOT = ["training.spot.enabled=true", "training.spot.max_wait_seconds=7200", "training.checkpoints=true"]


def test_spot_training_and_checkpoints_reach_the_aws_training_job():
    config = load_config(MODELS / "breast-cancer.yaml", SPOT)
    train = next(s for s in json.loads(definition_json(config, Project()))["Steps"] if s["Name"] == "TrainModel")
    arguments = train["Arguments"]
    assert arguments["EnableManagedSpotTraining"] is True
    assert arguments["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    uri = arguments["CheckpointConfig"]["S3Uri"]
    assert uri == {
        "Std:Join": {
            "On": "/",
            "Values": [
                "s3:/",
                "sagegate-development-training",
                "checkpoints",
                "breast-cancer",
                {"Get": "Execution.PipelineExecutionId"},
            ],
        }
    }


@pytest.mark.parametrize(
    ("model", "step", "job"),
    [("breast-cancer.yaml", "TrainModel", None), ("breast-cancer-tuned.yaml", "TuneModel", "TrainingJobDefinition")],
)
def test_the_local_variant_leaves_out_only_what_local_mode_refuses(model, step, job):
    config = load_config(MODELS / model, SPOT)
    aws = json.loads(definition_json(config, Project()))
    local = json.loads(definition_json(config, Project(), local=True))
    train = next(s for s in aws["Steps"] if s["Name"] == step)["Arguments"]
    train = train[job] if job else train  # a tuning job's training job definition
    for key in ("EnableManagedSpotTraining", "CheckpointConfig"):
        train.pop(key)
    train["StoppingCondition"].pop("MaxWaitTimeInSeconds")
    gate = next(s for s in aws["Steps"] if s["Name"] == "CheckQualityGate")
    gate["Arguments"]["IfSteps"] = [s for s in gate["Arguments"]["IfSteps"] if not s["Name"].startswith(REGISTER_STEP)]
    assert local == aws


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.spot.enabled=true"], "spot.max_wait_seconds is required when spot.enabled"),
        (["training.spot.enabled=true", "training.spot.max_wait_seconds=60"],
         "spot.max_wait_seconds (60) must be >= max_runtime_seconds (3600)"),
    ],
)  # fmt: skip
def test_spot_settings_sagemaker_refuses_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(MODELS / "breast-cancer.yaml", overrides)


def test_channels_become_one_parameter_and_one_processing_input_each():
    channels = ["data.source=null", "data.channels.train=data/train.csv", "data.channels.test=s3://elsewhere/test.csv"]
    definition = json.loads(definition_json(load_config(MODELS / "breast-cancer.yaml", channels), Project()))
    defaults = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert defaults["TrainDataUri"] == "s3://sagegate-development-training/training-data/breast-cancer/train.csv"
    assert defaults["TestDataUri"] == "s3://elsewhere/test.csv" and "InputDataUri" not in defaults
    preprocess = next(s for s in definition["Steps"] if s["Name"] == "PreprocessData")["Arguments"]
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in preprocess["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/input/train"] == {"Get": "Parameters.TrainDataUri"}
    assert inputs["/opt/ml/processing/input/test"] == {"Get": "Parameters.TestDataUri"}
    arguments = preprocess["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--channels") + 1] == "test,train"
    assert arguments[arguments.index("--input-dir") + 1] == "/opt/ml/processing/input"
