"""End to end: the real definition through the SDK's LocalPipelineSession, jobs as subprocesses.

One state folder is shared by the module, so the tests also show that the registry and the
bucket mirror persist across runs (each run starts a fresh local S3 server from the mirror).
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import requests

from pipelines.cli import main
from pipelines.cli.pipeline import GATE_MODULES, GateWarmUp, import_all
from pipelines.config import load_config
from pipelines.containers import locked_versions
from pipelines.definition import MLFLOW_STEP
from pipelines.local.s3 import LocalS3
from pipelines.local_run import RunError, list_records, run_local
from pipelines.registry import list_versions
from pipelines.state import Project, StateHome
from tests.conftest import DATA, MODELS

BUCKET = "sagegate-development-training"


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> StateHome:
    return StateHome(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def first_run(state):
    return run_local(load_config(MODELS / "breast-cancer.yaml"), Project(), state)


def versions(state: StateHome) -> list[str]:
    return [v["version"] for v in list_versions(state)[0] if v["name"] == "sagegate-development-breast-cancer"]


def sagegate(state: StateHome, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "sagegate")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(state.root)}
    )


def test_pipeline_runs_every_step_and_registers_in_mlflow(state, first_run):
    assert first_run.status == "Succeeded", first_run.failure_reason
    assert [s.name for s in first_run.steps] == [
        "PreprocessData",
        "TrainModel",
        "EvaluateModel",
        "CheckQualityGate",
        "RegisterMlflowModel",
    ]
    assert all(s.status == "Succeeded" and s.duration_seconds is not None for s in first_run.steps)
    assert first_run.gate == "passed"
    assert first_run.metrics["accuracy"] >= 0.85 and first_run.metrics["f1"] >= 0.85
    assert first_run.registered_version == "1"

    client = mlflow.MlflowClient(tracking_uri=state.mlflow_tracking_uri)
    version = client.get_model_version("sagegate-development-breast-cancer", "1")
    assert version.tags["sagemaker.pipeline_execution_id"] == first_run.run_id
    assert len(version.tags["data.sha256"]) == 64
    assert version.tags["serving.runtime"] == "onnx", version.tags.get("serving.reason")  # the bundled forest compiles
    # one environment: the local training job ran on the runtime image's versions, and says so
    libraries = {k.removeprefix("library."): v for k, v in version.tags.items() if k.startswith("library.")}
    assert libraries and libraries == {name: locked_versions()[name] for name in libraries}
    run = client.get_run(version.run_id)
    assert run.data.params["max_depth"] == "5" and run.data.params["model_class"].endswith("RandomForestClassifier")
    assert run.data.metrics["accuracy"] == pytest.approx(first_run.metrics["accuracy"])
    # the monitoring baseline of the training split goes with the version (MLflow artifacts, S3 location)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "monitoring")} == {
        "monitoring/statistics.json",
        "monitoring/constraints.json",
    }
    assert version.tags["monitoring.baseline_uri"] == f"{first_run.artifacts['splits']}baseline"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/evaluation.json", "evaluation/confusion_matrix.png", "evaluation/roc.png"} <= artifacts
    # which features the model leans on: permutation importance, with the plot and the top names on the version
    assert {"evaluation/feature_importance.json", "evaluation/feature_importance.png"} <= artifacts
    top = version.tags["feature_importance.top"].split(",")
    assert len(top) == 5 and set(top) <= set(pd.read_csv(DATA / "breast_cancer.csv").columns)
    # downloaded with an explicit store: setting MLflow's process-wide tracking URI would outlive this test
    # (later tests, and the gate's handlers, read MLFLOW_TRACKING_URI, which an explicit setting overrides)
    loaded = mlflow.sklearn.load_model(client.get_model_version_download_uri("sagegate-development-breast-cancer", "1"))
    rows = pd.read_csv(DATA / "breast_cancer.csv")
    assert (loaded.predict(rows.drop(columns="label")[:50]) == rows["label"][:50]).mean() > 0.8


def test_artifacts_use_the_aws_bucket_key_layout(state, first_run):
    with LocalS3(state) as s3:
        keys = {
            item["Key"]
            for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", [])
        }
        report = json.loads(s3.read(f"s3://{BUCKET}/evaluation/breast-cancer/{first_run.run_id}/evaluation.json"))
    assert "training-data/breast-cancer/data.csv" in keys
    for part in ("train", "validation", "test"):
        assert f"training-data/breast-cancer/{first_run.run_id}/{part}/{part}.csv" in keys
    assert any(k.startswith("training-code/breast-cancer/") and k.endswith("/sourcedir.tar.gz") for k in keys)
    for artifact in ("model", "served_model"):
        assert first_run.artifacts[artifact].removeprefix(f"s3://{BUCKET}/") in keys
    assert first_run.artifacts["served_model"].endswith(f"models/breast-cancer/served/{first_run.run_id}/model.tar.gz")
    assert report["binary_classification_metrics"]["accuracy"]["value"] == pytest.approx(first_run.metrics["accuracy"])
    assert "receiver_operating_characteristic_curve" in report["binary_classification_metrics"]
    assert list(state.jobs.iterdir()) == []  # job scratch folders are cleaned up


def test_false_condition_ends_in_the_fail_step_and_registers_nothing(state, first_run):
    result = sagegate(
        state, "run", str(MODELS / "breast-cancer.yaml"), "--set", "quality_gate.metrics.accuracy.min=0.999"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "QualityGateFailed" in result.stdout
    shown = re.search(r"Quality gate failed for breast-cancer: accuracy=([0-9.]+)", result.stdout)
    assert shown and float(shown.group(1)) == pytest.approx(first_run.metrics["accuracy"], abs=1e-4)
    assert "(needs >= 0.999)" in result.stdout and "Nothing was registered." in result.stdout
    assert versions(state) == ["1"]
    record = list_records(state)[0][-1]
    assert record.gate == "failed" and record.status == "Failed"
    assert [s.name for s in record.steps][-1] == "QualityGateFailed"


BAD_DATA = {
    "empty.csv": ("", "empty.csv: file is empty"),
    "no_target.csv": ("a,b\n" + "1,2\n" * 20, "target column 'label' not found"),
    "text.csv": (
        "a,b,label\n" + "1,2,0\n1,2,1\n" * 10 + "x,2,1\n",
        "column 'a' has a non-numeric value 'x' at data row 21",
    ),
    "nan.csv": ("a,b,label\n" + "1,2,0\n1,,1\n" * 10, "column 'b' has 10 missing (NaN) value(s), first at data row 2"),
    "one_class.csv": ("a,b,label\n" + "1,2,0\n" * 20, "target column 'label' has a single class"),
    "tiny.csv": ("a,b,label\n1,2,0\n3,4,1\n", "2 data rows is too few to split"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_stops_the_run_with_a_named_reason_and_keeps_the_registry(state, first_run, tmp_path, name):
    text, expected = BAD_DATA[name]
    path = tmp_path / "data.csv"  # the staged key is always data.csv; the reason names it
    path.write_text(text)
    record = run_local(load_config(MODELS / "breast-cancer.yaml", [f"data.source={path}"]), Project(), state)
    assert record.status == "Failed"
    assert expected.replace(name, "data.csv") in record.failure_reason
    assert record.steps[-1].name == "PreprocessData" and record.registered_version is None
    assert versions(state) == ["1"]


def test_the_run_reads_its_data_in_place_and_uploads_the_staged_copy_once_the_model_is_trained(tmp_path):
    """The preprocessing job reads the local file (a file:// input, as SageMaker's local mode allows), so it
    neither waits for the upload nor downloads it back. The staged copy, which the pipeline's InputDataUri
    defaults to, uploads once the model is trained and is in by the run's end."""
    home = StateHome(tmp_path / "state").ensure()  # its own: the module's registry keeps its versions
    data = tmp_path / "data.csv"
    data.write_text("".join((DATA / "breast_cancer.csv").read_text().splitlines(keepends=True)[:-20]))
    config = load_config(MODELS / "breast-cancer.yaml", [f"data.source={data}"])
    staged_uri = f"s3://{BUCKET}/training-data/breast-cancer/data.csv"
    seen: dict[str, bytes | None] = {}

    def progress(step: str, status: str, seconds: float | None) -> None:
        if step in ("PreprocessData", "TrainModel"):
            with LocalS3(home) as s3:
                seen[step] = s3.read(staged_uri)

    record = run_local(config, Project(), home, progress=progress)
    assert record.status == "Succeeded", record.failure_reason
    assert seen == {"PreprocessData": None, "TrainModel": None}  # read in place; not staged before it is trained
    assert record.parameters["InputDataUri"] == staged_uri
    with LocalS3(home) as s3:
        assert s3.read(staged_uri) == data.read_bytes()


def test_missing_data_file_is_refused_before_anything_runs(state, first_run, tmp_path):
    with pytest.raises(RunError, match=r"data\.source: file not found: .*nope\.csv"):
        run_local(
            load_config(MODELS / "breast-cancer.yaml", [f"data.source={tmp_path / 'nope.csv'}"]), Project(), state
        )
    assert versions(state) == ["1"]
    recorded = {r.attempt for r in list_records(state)[0]}
    assert {p.name for p in (state.runs / "logs").iterdir()} <= recorded  # no orphaned log folder


def test_the_cli_refuses_a_missing_data_file_before_anything_runs(state, tmp_path):
    """The run reads the file in place before any step: no record, no staged upload."""
    before = {r.attempt for r in list_records(state)[0]}
    missing = tmp_path / "nope.csv"
    result = sagegate(state, "run", str(MODELS / "breast-cancer.yaml"), "--set", f"data.source={missing}")
    assert result.returncode == 1
    assert f"data.source: file not found: {missing}" in result.stderr
    assert {r.attempt for r in list_records(state)[0]} == before


def test_bad_config_exits_2_with_the_field(state):
    """scikit-learn's part of the check runs in the run's job server while the run builds its definition:
    still before any step starts, and the run leaves no record."""
    before = {r.attempt for r in list_records(state)[0]}
    result = sagegate(state, "run", str(MODELS / "breast-cancer.yaml"), "--set", "model.hyperparameters.max_depth=-1")
    assert result.returncode == 2
    assert "breast-cancer.yaml" in result.stderr and "max_depth" in result.stderr
    assert {r.attempt for r in list_records(state)[0]} == before


def test_the_collector_paused_for_the_imports_is_back_on_after_a_refused_run(state, monkeypatch):
    """`sagegate run` pauses the cyclic collector while the SDK imports (its gate-import thread turns it
    back on): a run refused before that thread starts turns it back on itself."""
    monkeypatch.setenv("SAGEGATE_HOME", str(state.root))
    bad = ["--set", "model.hyperparameters.max_depth=-1"]
    assert main(["run", str(MODELS / "breast-cancer.yaml"), *bad]) == 2
    assert gc.isenabled()
    gc.disable()
    try:
        import_all(("json",))
    finally:
        enabled = gc.isenabled()
        gc.enable()
    assert enabled


def test_sagemaker_platform_is_never_run_locally(state, first_run, monkeypatch):
    """Without credentials a SageMaker run stops before anything starts, saying what to do."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = sagegate(state, "run", str(MODELS / "breast-cancer.yaml"), "--set", "training.platform=sagemaker")
    assert result.returncode == 1
    assert "no AWS credentials: run `aws configure` or `aws sso login`" in result.stderr
    assert versions(state) == ["1"]


def test_second_run_sees_the_first_runs_registry_and_objects(state, first_run):
    result = sagegate(
        state, "run", str(MODELS / "breast-cancer.yaml"), "--json", "--set", "model.hyperparameters.max_depth=8"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["registered_version"] == "2" and versions(state) == ["1", "2"]
    # pipeline → gate → deploy: version 2 passed the gate and serves on the serverless endpoint
    deployment = record["deployment"]
    assert (deployment["status"], deployment["decision"]) == ("SUCCEEDED", "deploy_serverless")
    assert deployment["endpoint"] == "sagegate-development-breast-cancer-serverless"
    assert [m["aliases"] for m in list_versions(state)[0] if m["version"] == "2"] == [["champion"]]
    shown = sagegate(state, "executions", "show", deployment["name"])
    assert "RecordChampion" in shown.stdout and "SUCCEEDED" in shown.stdout
    # the first run's evaluation survived the local S3 server's restarts
    with LocalS3(state) as s3:
        assert s3.read(f"s3://{BUCKET}/evaluation/breast-cancer/{first_run.run_id}/evaluation.json")
    listing = sagegate(state, "runs")
    assert first_run.run_id in listing.stdout and record["run_id"] in listing.stdout
    models = sagegate(state, "models", "--json")
    assert [m["version"] for m in json.loads(models.stdout)] == ["1", "2"]


def test_regression_example_passes_its_r2_gate(state):
    record = run_local(load_config(MODELS / "friedman1.yaml"), Project(), state)
    assert record.status == "Succeeded", record.failure_reason
    assert record.metrics["r2"] >= 0.7 and record.registered_version == "1"
    rows = [v for v in list_versions(state)[0] if v["name"] == "sagegate-development-friedman1"]
    assert [v["runtime"] for v in rows] == ["onnx"], [v["runtime_reason"] for v in rows]
    with LocalS3(state) as s3:
        assert s3.read(record.artifacts["evaluation"] + "residuals.png")


def test_training_past_its_max_runtime_is_stopped_naming_the_limit(state, first_run):
    """SageMaker's StoppingCondition, enforced locally: the job is killed, the step fails, nothing registers."""
    config = load_config(
        MODELS / "breast-cancer.yaml", ["training.max_runtime_seconds=1", "model.hyperparameters.n_estimators=3000"]
    )
    before = versions(state)
    record = run_local(config, Project(), state)
    assert record.status == "Failed"
    train = next(step for step in record.steps if step.name == "TrainModel")
    assert train.status == "Failed"
    assert "MaxRuntimeExceeded" in train.failure_reason and "MaxRuntimeInSeconds=1" in train.failure_reason
    assert "MaxRuntimeExceeded" in record.failure_reason
    assert versions(state) == before


def test_data_given_as_channels_reaches_each_split_as_given(tmp_path):
    """data.channels: train and test files apart (no split); each is staged under its own key and
    is its own pipeline parameter."""
    rows = pd.read_csv(DATA / "breast_cancer.csv")
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    rows.iloc[:400].to_csv(train, index=False)
    rows.iloc[400:].to_csv(test, index=False)
    overrides = ["data.source=null", f"data.channels.train={train}", f"data.channels.test={test}"]
    home = StateHome(tmp_path / "state")
    record = run_local(load_config(MODELS / "breast-cancer.yaml", overrides), Project(), home)
    assert record.status == "Succeeded", record.failure_reason
    bucket = "s3://sagegate-development-training/training-data/breast-cancer"
    assert record.parameters["TrainDataUri"] == f"{bucket}/train.csv"
    assert record.parameters["TestDataUri"] == f"{bucket}/test.csv"
    assert "InputDataUri" not in record.parameters
    splits = record.artifacts["splits"]
    with LocalS3(home) as s3:
        train_split, test_split = s3.read(splits + "train/train.csv"), s3.read(splits + "test/test.csv")
    assert len(pd.read_csv(io.BytesIO(train_split))) == 400
    assert len(pd.read_csv(io.BytesIO(test_split))) == len(rows) - 400


def test_the_gate_warms_up_once_the_register_job_starts_and_every_step_is_still_shown(tmp_path):
    """Before the register job the run's jobs, uploads and the job server's successor want the cores; then the
    gate's modules import and the gate is prepared (moto, its functions and state machine) on a thread;
    joining earlier does it anyway."""
    home = StateHome(tmp_path / "state").ensure()
    environment = dict(os.environ)
    shown: list[tuple[str, str, float | None]] = []
    warm = GateWarmUp(MLFLOW_STEP, lambda *step: shown.append(step), Project(), home)
    for step in ("PreprocessData", "TrainModel", "EvaluateModel"):
        warm.progress(step, "Executing", None)
        warm.progress(step, "Succeeded", 1.5)
    assert warm.thread.ident is None
    warm.progress(MLFLOW_STEP, "Executing", None)
    assert warm.thread.ident is not None
    gate = warm.join()
    assert all(module in sys.modules for module in GATE_MODULES)
    assert gate is not None and gate.state_machine_arn
    machines = gate.client("stepfunctions").list_state_machines()["stateMachines"]
    assert [m["stateMachineArn"] for m in machines] == [gate.state_machine_arn]
    assert dict(os.environ) == environment  # the run's jobs go on meanwhile: the gate's variables wait for entry
    assert [step for step, _, _ in shown] == [
        s for s in ("PreprocessData", "TrainModel", "EvaluateModel") for _ in "ab"
    ] + [MLFLOW_STEP]
    endpoint = gate.endpoint_url
    warm.close()  # the run failed after all: its moto server stops
    with pytest.raises(requests.ConnectionError):
        requests.get(endpoint, timeout=5)
    never_trained = GateWarmUp(MLFLOW_STEP, None, Project(), home)
    assert never_trained.join() is not None  # a gate due before the register job: prepared at once
    never_trained.close()
