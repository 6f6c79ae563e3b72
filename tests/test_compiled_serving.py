"""Compiled serving: the register job's ONNX conversion is served only when it answers the held-out
test split as scikit-learn does; otherwise scikit-learn serves and the reason is shown."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import boto3
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.containers import container_code
from pipelines.local.gateway import start_gateway, stop_gateway
from pipelines.local.s3 import LocalS3
from pipelines.registry import list_versions
from pipelines.state import Project, StateHome
from tests.conftest import DATA, write_config

BREAST_CANCER = pd.read_csv(DATA / "breast_cancer.csv")
FEATURES = [c for c in BREAST_CANCER.columns if c != "label"]


def container_module(folder: str, script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{folder}_job", container_code(folder, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


register = container_module("register", "register.py")
inference = container_module("inference", "inference.py")


def fitted(estimator: object, target: pd.Series) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", estimator)]).fit(BREAST_CANCER[FEATURES], target)


def answers(model: Pipeline, task: str = "classification") -> dict:
    return register.sklearn_answers(model, BREAST_CANCER[FEATURES], task)


def metadata(model_class: str, task: str = "classification") -> dict:
    return {"features": FEATURES, "task": task, "classes": [0, 1], "model_class": model_class}


def test_a_verified_conversion_is_kept_and_answers_as_scikit_learn():
    model = fitted(RandomForestClassifier(50, max_depth=5, random_state=0), BREAST_CANCER["label"])
    onnx_bytes, serving = register.compile_onnx(model, metadata("RandomForestClassifier"), BREAST_CANCER)
    assert onnx_bytes is not None and serving == {
        "runtime": "onnx",
        "reason": f"verified on {len(BREAST_CANCER)} held-out test rows",
    }


def test_verification_refuses_a_conversion_that_changes_a_label(monkeypatch):
    model = fitted(RandomForestClassifier(20, random_state=0), BREAST_CANCER["label"])
    # another model's conversion: a real ONNX graph that labels some rows differently
    other = fitted(LogisticRegression(C=1e-4), BREAST_CANCER["label"])
    converted = register.compile_onnx(other, metadata("LogisticRegression"), BREAST_CANCER)[0]
    assert converted is not None
    changed = np.flatnonzero(model.predict(BREAST_CANCER[FEATURES]) != other.predict(BREAST_CANCER[FEATURES]))
    assert len(changed) > 0
    monkeypatch.setattr(register, "VERIFY_BATCH_ROWS", 100)  # 569 rows: the count spans six batches
    reason = register.verify(answers(model), converted, BREAST_CANCER[FEATURES], "classification")
    assert reason is not None
    assert reason.startswith(
        f"ONNX changes the label of {len(changed)} of {len(BREAST_CANCER)} test rows (row {changed[0]}:"
    )
    assert register.verify(answers(other), converted, BREAST_CANCER[FEATURES], "classification") is None


def test_onnx_runtime_answers_the_split_in_batches_as_it_answers_it_whole(monkeypatch):
    import onnxruntime

    model = fitted(RandomForestClassifier(30, max_depth=6, random_state=0), BREAST_CANCER["label"])
    converted = register.compile_onnx(model, metadata("RandomForestClassifier"), BREAST_CANCER)[0]
    session = onnxruntime.InferenceSession(converted, providers=["CPUExecutionProvider"])
    whole = session.run(None, {session.get_inputs()[0].name: BREAST_CANCER[FEATURES].to_numpy(dtype=np.float64)})
    monkeypatch.setattr(register, "VERIFY_BATCH_ROWS", 64)  # 569 rows: eight full batches and a short one
    batched = register.onnx_answers(session, BREAST_CANCER[FEATURES])
    assert len(batched) == len(whole) == 2
    for part, full in zip(batched, whole, strict=True):
        assert part.shape == full.shape and np.array_equal(part, full)


def test_verification_refuses_predictions_outside_the_tolerance():
    target = BREAST_CANCER[FEATURES[0]]
    model = fitted(GradientBoostingRegressor(n_estimators=20, random_state=0), target)
    shifted = fitted(GradientBoostingRegressor(n_estimators=21, random_state=0), target)
    converted = register.compile_onnx(shifted, metadata("GradientBoostingRegressor", "regression"), BREAST_CANCER)[0]
    reason = register.verify(answers(model, "regression"), converted, BREAST_CANCER[FEATURES], "regression")
    assert reason is not None and reason.startswith("ONNX predictions differ by up to")


def test_an_estimator_skl2onnx_cannot_convert_is_recorded_with_the_reason():
    from sklearn.neighbors import NearestCentroid

    model = fitted(NearestCentroid(), BREAST_CANCER["label"])
    onnx_bytes, serving = register.compile_onnx(model, metadata("sklearn.neighbors.NearestCentroid"), BREAST_CANCER)
    assert onnx_bytes is None and serving["runtime"] == "sklearn"
    assert serving["reason"].startswith("skl2onnx cannot convert sklearn.neighbors.NearestCentroid:")


def test_the_model_server_runs_a_verified_archive_with_onnx_runtime_and_others_with_scikit_learn(tmp_path):
    import joblib

    model = fitted(RandomForestClassifier(30, max_depth=4, random_state=1), BREAST_CANCER["label"])
    meta = metadata("RandomForestClassifier")
    onnx_bytes, serving = register.compile_onnx(model, meta, BREAST_CANCER)
    source = tmp_path / "trained"
    source.mkdir()
    joblib.dump(model, source / "model.joblib")
    rows = BREAST_CANCER[FEATURES].to_numpy(dtype=float)
    for served_bytes, expected_runtime in ((onnx_bytes, "onnx"), (None, "sklearn")):
        record = serving if served_bytes else {"runtime": "sklearn", "reason": "test"}
        archive = register.served_archive(source, meta, served_bytes, record)
        unpacked = tmp_path / expected_runtime
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        loaded = inference.model_fn(str(unpacked))
        assert loaded.runtime == expected_runtime
        answer = inference.predict_fn(rows, loaded, probabilities=True)
        assert answer["predictions"] == model.predict(BREAST_CANCER[FEATURES]).tolist()
        np.testing.assert_allclose(
            answer["probabilities"], model.predict_proba(BREAST_CANCER[FEATURES]), rtol=1e-5, atol=1e-6
        )


def sagegate(home: Path, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "sagegate")
    return subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(home)})


def test_a_model_skl2onnx_cannot_convert_is_served_by_scikit_learn_with_the_reason_shown(tmp_path):
    config = write_config(
        tmp_path,
        (Path(DATA.parent / "models" / "breast-cancer.yaml").read_text())
        .replace("name: breast-cancer", "name: centroid")
        .replace("sklearn.ensemble.RandomForestClassifier", "sklearn.neighbors.NearestCentroid")
        .replace("hyperparameters: {n_estimators: 100, max_depth: 5, random_state: 42}", "hyperparameters: {}"),
    )
    home = tmp_path / "state"
    run = sagegate(home, "run", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    try:
        (version,) = list_versions(StateHome(home))[0]
        assert version["runtime"] == "sklearn"
        assert version["runtime_reason"].startswith("skl2onnx cannot convert sklearn.neighbors.NearestCentroid")
        listing = sagegate(home, "models").stdout
        assert "runtime: skl2onnx cannot convert sklearn.neighbors.NearestCentroid" in listing, listing

        endpoint = "sagegate-development-centroid-serverless"
        shown = json.loads(sagegate(home, "endpoints", "show", endpoint).stdout)
        (variant,) = shown["ProductionVariants"]
        assert variant["Runtime"]["runtime"] == "sklearn"
        assert variant["Runtime"]["reason"] == version["runtime_reason"]

        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=start_gateway(StateHome(home), Project())["url"],
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        rows = BREAST_CANCER[FEATURES].head(20)
        answer = client.invoke_endpoint(
            EndpointName=endpoint, ContentType="text/csv", Body=rows.to_csv(header=False, index=False)
        )
        served = json.loads(answer["Body"].read())["predictions"]
        with LocalS3(StateHome(home)) as s3:
            archive = s3.download(version["model_data_uri"], tmp_path / "model.tar.gz")
        with tarfile.open(archive) as tar:
            assert "model.onnx" not in tar.getnames()
            tar.extractall(tmp_path / "served", filter="data")
        import joblib

        assert served == joblib.load(tmp_path / "served" / "model.joblib").predict(rows).tolist()
    finally:
        stop_gateway(StateHome(home))


def test_tolerance_is_relative_above_one_and_absolute_below():
    expected = np.array([0.0, 0.5, 1000.0])
    assert register.mismatch(expected, expected + np.array([9e-6, 9e-6, 9e-3]), "predictions") is None
    assert register.mismatch(expected, expected + np.array([2e-5, 0, 0]), "predictions") is not None
    assert register.mismatch(expected, expected + np.array([0, 0, 2e-2]), "predictions") is not None


@pytest.mark.parametrize("bootstrap", [True, False])
def test_a_forest_converts_to_the_same_graph_without_computing_its_sample_indices(bootstrap: bool):
    from skl2onnx import to_onnx

    forest = RandomForestClassifier(10, max_depth=4, bootstrap=bootstrap, random_state=3)
    model = fitted(forest, BREAST_CANCER["label"])
    sample = BREAST_CANCER[FEATURES].to_numpy(dtype=np.float32)[:1]
    options = {"zipmap": False}
    shallow = register.without_sample_indices(forest)
    assert shallow is not forest and shallow.estimators_ is forest.estimators_
    assert not hasattr(shallow, "estimators_samples_")  # what skl2onnx would compute, tree by tree
    assert [len(rows) for rows in forest.estimators_samples_] == [len(BREAST_CANCER)] * 10  # the model is untouched
    original = to_onnx(forest, sample, options=options, target_opset=register.ONNX_OPSETS).SerializeToString()
    assert to_onnx(shallow, sample, options=options, target_opset=register.ONNX_OPSETS).SerializeToString() == original
    assert model.steps[-1][1] is forest
    linear = LogisticRegression()
    assert register.without_sample_indices(linear) is linear


def test_the_register_job_checks_onnx_against_the_evaluate_job_s_answers_for_the_same_archive(tmp_path):
    """The evaluate job saves the model's answers on the test split with the archive's sha256; the register job
    verifies the conversion against them (without asking the forest again), and only for that archive and split."""
    import joblib

    evaluate = container_module("evaluate", "evaluate.py")
    model = fitted(RandomForestClassifier(30, max_depth=5, random_state=0), BREAST_CANCER["label"])
    meta = {**metadata("RandomForestClassifier"), "target": "label"}
    packed, model_dir, test_dir, output = (tmp_path / name for name in ("packed", "model", "test", "evaluation"))
    for folder in (packed, model_dir, test_dir):
        folder.mkdir()
    joblib.dump(model, packed / "model.joblib")
    (packed / "metadata.json").write_text(json.dumps(meta))
    archive = model_dir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.joblib", "metadata.json"):
            tar.add(packed / name, arcname=name)
    BREAST_CANCER.to_csv(test_dir / "test.csv", index=False)
    evaluate.main(["--model-dir", str(model_dir), "--test-dir", str(test_dir), "--output-dir", str(output)])
    assert register.ANSWERS == evaluate.ANSWERS

    evaluated = register.evaluated_answers(output, archive, len(BREAST_CANCER))
    assert evaluated is not None and set(evaluated) == {"predicted", "probabilities"}
    for name, values in answers(model).items():
        assert np.array_equal(evaluated[name], values)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(archive.read_bytes() + b"\0")  # another archive: its answers are not these
    assert register.evaluated_answers(output, other, len(BREAST_CANCER)) is None
    assert register.evaluated_answers(output, archive, len(BREAST_CANCER) - 1) is None
    assert register.evaluated_answers(tmp_path, archive, len(BREAST_CANCER)) is None  # no answers saved
    saved = (output / register.ANSWERS).read_bytes()
    for damaged in (saved[: len(saved) // 2], b"", b"not an archive"):  # cut short, empty, not a zip
        (tmp_path / register.ANSWERS).write_bytes(damaged)
        assert register.evaluated_answers(tmp_path, archive, len(BREAST_CANCER)) is None

    def asked(*_: object) -> None:
        raise AssertionError("the forest was asked again")

    model.predict = model.predict_proba = asked
    assert register.compile_onnx(model, meta, BREAST_CANCER, evaluated)[1]["runtime"] == "onnx"
    doctored = {**evaluated, "predicted": evaluated["predicted"].copy()}
    doctored["predicted"][7] = 1 - doctored["predicted"][7]
    onnx_bytes, serving = register.compile_onnx(model, meta, BREAST_CANCER, doctored)
    assert onnx_bytes is None
    assert serving["reason"].startswith(f"ONNX changes the label of 1 of {len(BREAST_CANCER)} test rows (row 7:")
