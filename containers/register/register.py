"""Register job: compile the model, publish what will serve, log it to MLflow and add a registry version.

Runs in every mode (locally against a sqlite store, on AWS against a SageMaker managed
MLflow tracking server ARN), only after the quality gate passed. The fitted pipeline is
converted to ONNX (skl2onnx) and the conversion is kept only if ONNX Runtime answers the
held-out test split as scikit-learn does: the same labels, probabilities / predictions within
`TOLERANCE` (relative, and absolute below 1). scikit-learn's answers are the evaluate job's, which
scored the same archive on the same split (`ANSWERS`, matched by the archive's sha256). The served
archive (model.joblib, metadata.json, serving.json and, when verified, model.onnx) is uploaded
before the version is created, so no version ever names an archive that is not there. Runs on the
project's runtime image; imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

TOLERANCE = 1e-5
# ONNX Runtime answers the test split this many rows at a time: its buffers are one batch's, not the split's.
VERIFY_BATCH_ROWS = 10_000
# written by the evaluate job beside evaluation.json (its ANSWERS): the model's answers on the test split
ANSWERS = "test_answers.npz"
# Pinned so a converter upgrade cannot silently change the operators the image's runtime must run.
ONNX_OPSETS = {"": 18, "ai.onnx.ml": 3}


def fail(message: str) -> None:
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "message").write_text(message)
    sys.exit(f"ERROR: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="/opt/ml/processing/model")
    parser.add_argument("--evaluation-dir", default="/opt/ml/processing/evaluation")
    parser.add_argument("--schema-dir", default="/opt/ml/processing/schema")
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--baseline-dir", default="", help="statistics.json + constraints.json of the training split")
    parser.add_argument("--baseline-uri", default="", help="where that baseline is (s3://), for the monitor")
    parser.add_argument("--output-dir", default="/opt/ml/processing/registration")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--artifact-location", default="", help="new experiments only; empty = server default")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--registered-model-name", required=True)
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--served-model-uri", required=True, help="s3:// where the served model.tar.gz goes")
    parser.add_argument("--tuning-job", default="", help="the tuning job whose best training job made the model")
    parser.add_argument("--training-job", default="", help="that best training job (the trial)")
    return parser.parse_args(argv)


def unpack(model_dir: Path) -> Path:
    target = Path(tempfile.mkdtemp())
    with tarfile.open(model_dir / "model.tar.gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # pragma: no cover - older Python in older images
            tar.extractall(target)
    return target


def signature(metadata: dict[str, Any]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    target_type = "double" if metadata["task"] == "regression" else "string"
    if metadata["task"] == "classification" and all(isinstance(c, int) for c in metadata["classes"]):
        target_type = "long"
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in metadata["features"]]),
        outputs=Schema([ColSpec(target_type)]),
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def mismatch(expected: np.ndarray, actual: np.ndarray, what: str) -> str | None:
    """None when `actual` is within TOLERANCE of `expected`, else which row differs and by how much."""
    expected, actual = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float).reshape(expected.shape)
    allowed = TOLERANCE * np.maximum(np.abs(expected), 1.0)
    off = np.abs(actual - expected) > allowed
    if not off.any():
        return None
    row = int(np.argwhere(off)[0][0])
    worst = float(np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)))
    return f"ONNX {what} differ by up to {worst:.2e} relative (> {TOLERANCE:g}), first at test row {row}"


def onnx_answers(session: Any, features: pd.DataFrame) -> list[np.ndarray]:
    """Every output of the ONNX model for every row, computed VERIFY_BATCH_ROWS rows at a time."""
    name = session.get_inputs()[0].name
    batches = [
        session.run(None, {name: features.iloc[start : start + VERIFY_BATCH_ROWS].to_numpy(dtype=np.float64)})
        for start in range(0, max(len(features), 1), VERIFY_BATCH_ROWS)
    ]
    return [np.concatenate(output) for output in zip(*batches, strict=True)]


def sklearn_answers(model: Any, features: pd.DataFrame, task: str) -> dict[str, np.ndarray]:
    """What the fitted pipeline answers for every row: its labels (and probabilities), or its predictions."""
    answers = {"predicted": np.asarray(model.predict(features))}
    if task == "classification" and hasattr(model, "predict_proba"):
        answers["probabilities"] = model.predict_proba(features)
    return answers


def evaluated_answers(evaluation_dir: Path, archive: Path, rows: int) -> dict[str, np.ndarray] | None:
    """The evaluate job's answers (`ANSWERS`), if it scored this very archive on as many rows; else None."""
    try:
        with np.load(evaluation_dir / ANSWERS, allow_pickle=False) as saved:
            answers = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent, cut short or not an archive:
        return None  # the register job asks the model itself
    scored = str(answers.pop("model_sha256", ""))
    if scored != hashlib.sha256(archive.read_bytes()).hexdigest() or len(answers.get("predicted", ())) != rows:
        return None
    return answers


def verify(expected: dict[str, np.ndarray], onnx_bytes: bytes, features: pd.DataFrame, task: str) -> str | None:
    """None if ONNX Runtime answers every test row as scikit-learn did (`expected`), else the reason it does not."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    outputs = onnx_answers(session, features)
    if task == "regression":
        return mismatch(expected["predicted"], outputs[0], "predictions")
    predicted, labels = expected["predicted"], outputs[0].ravel()
    changed = np.flatnonzero(predicted.astype(str) != labels.astype(str))
    if len(changed):
        row = int(changed[0])
        return (
            f"ONNX changes the label of {len(changed)} of {len(predicted)} test rows "
            f"(row {row}: scikit-learn {predicted[row]!r}, ONNX {labels[row]!r})"
        )
    if "probabilities" in expected and len(outputs) > 1:
        return mismatch(expected["probabilities"], outputs[1], "probabilities")
    return None


def without_sample_indices(estimator: Any) -> Any:
    """A forest as skl2onnx should see it. Resolving options, skl2onnx reads every public fitted
    attribute, and a forest computes `estimators_samples_` on each read from its training-set size:
    each tree's bootstrap sample redrawn (0.77 s of a 50-tree forest on 140k rows, twice) or, without
    bootstrapping, each tree's row numbers (140 MB at 700k rows). A shallow copy without that size
    holds the same trees, so it converts to the same graph, and the attribute is simply absent
    (skl2onnx skips it); verification then compares the graph with the original model."""
    if not hasattr(estimator, "estimators_") or "_n_samples" not in vars(estimator):
        return estimator
    shallow = copy.copy(estimator)
    del shallow._n_samples
    return shallow


def to_onnx(model: Any, features: pd.DataFrame, task: str) -> bytes:
    """The pipeline as one ONNX graph that computes what scikit-learn computes: preprocessing in double
    precision, then the features rounded to float32 (what scikit-learn's trees do to their input)
    for the estimator. Converting the whole pipeline in float32 instead moves rows across split
    thresholds (a 50-tree forest: probabilities off by 0.02 on the breast-cancer data)."""
    import onnx
    from onnx import TensorProto, compose, helper
    from skl2onnx import to_onnx as convert

    sample = features.to_numpy(dtype=np.float64)[:1]
    # classifiers: probabilities as one tensor, not a list of {class: p} maps
    options = {"zipmap": False} if task == "classification" else None
    estimator = convert(
        without_sample_indices(model.steps[-1][1]), sample.astype(np.float32), options=options, target_opset=ONNX_OPSETS
    )
    if len(model.steps) == 1:
        return estimator.SerializeToString()
    preprocessing = convert(model[:-1], sample, target_opset=ONNX_OPSETS)
    width = sample.shape[1]
    rounding = helper.make_model(
        helper.make_graph(
            [helper.make_node("Cast", ["scaled"], ["rounded"], to=TensorProto.FLOAT)],
            "round_to_float32",
            [helper.make_tensor_value_info("scaled", TensorProto.DOUBLE, [None, width])],
            [helper.make_tensor_value_info("rounded", TensorProto.FLOAT, [None, width])],
        )
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in ONNX_OPSETS.items()]
    for part in (preprocessing, rounding, estimator):  # merge_models needs identical opset lists
        del part.opset_import[:]
        part.opset_import.extend(opsets)
        part.ir_version = preprocessing.ir_version
    merged = compose.merge_models(
        preprocessing, rounding, io_map=[(preprocessing.graph.output[0].name, "scaled")], prefix2="round_"
    )
    merged = compose.merge_models(
        merged, estimator, io_map=[("round_rounded", estimator.graph.input[0].name)], prefix2="model_"
    )
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def compile_onnx(
    model: Any, metadata: dict[str, Any], test: pd.DataFrame, evaluated: dict[str, np.ndarray] | None = None
) -> tuple[bytes | None, dict[str, Any]]:
    """The ONNX model if it converts and answers the test split as scikit-learn does (`evaluated`: the
    evaluate job's answers for this model, else the model is asked), and the record of why or why not."""
    features = test[metadata["features"]]
    try:
        converted = to_onnx(model, features, metadata["task"])
    except Exception as error:  # skl2onnx raises many types for estimators it does not know
        reason = f"skl2onnx cannot convert {metadata['model_class']}: {_first_line(error)}"
        return None, {"runtime": "sklearn", "reason": reason}
    expected = evaluated or sklearn_answers(model, features, metadata["task"])
    try:
        problem = verify(expected, converted, features, metadata["task"])
    except Exception as error:  # the runtime refuses the converted graph
        problem = f"ONNX Runtime cannot run the converted {metadata['model_class']}: {_first_line(error)}"
    if problem:
        return None, {"runtime": "sklearn", "reason": problem}
    return converted, {"runtime": "onnx", "reason": f"verified on {len(test)} held-out test rows"}


def served_archive(
    model_dir: Path, metadata: dict[str, Any], onnx_bytes: bytes | None, serving: dict[str, Any]
) -> Path:
    """model.tar.gz as the endpoint gets it: the trained files, serving.json and model.onnx if verified."""
    folder = Path(tempfile.mkdtemp())
    (folder / "serving.json").write_text(json.dumps(serving, indent=2))
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
    if onnx_bytes is not None:
        (folder / "model.onnx").write_bytes(onnx_bytes)
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:  # 9 took 0.42 s for a 4.6 MB forest, 6: 0.08 s
        tar.add(model_dir / "model.joblib", arcname="model.joblib")
        for name in ("metadata.json", "serving.json", "model.onnx"):
            if (folder / name).is_file():
                tar.add(folder / name, arcname=name)
    return archive


def publish(archive: Path, uri: str) -> None:
    """Upload the served archive (the job's S3 credentials and endpoint: the processing role on AWS)."""
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").upload_file(str(archive), bucket, key)


def make_durable(artifact_location: str) -> None:
    """fsync a local (file:) model artifact and check it is complete; remote stores are durable on upload."""
    if not artifact_location.startswith("file:"):
        return
    from urllib.parse import unquote, urlparse

    root = Path(unquote(urlparse(artifact_location).path))
    if not (root / "MLmodel").is_file():
        fail(f"register: the logged model at {root} has no MLmodel file; nothing registered")
    for folder, _, files in os.walk(root):
        for name in [*files, "."]:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import sklearn

    try:
        model_dir = unpack(Path(args.model_dir))
        model = joblib.load(model_dir / "model.joblib")
        metadata = json.loads((model_dir / "metadata.json").read_text())
        evaluation_path = Path(args.evaluation_dir) / "evaluation.json"
        evaluation = json.loads(evaluation_path.read_text())
        schema_path = Path(args.schema_dir) / "schema.json"
        schema = json.loads(schema_path.read_text())
        metric_values = {name: entry["value"] for name, entry in evaluation["metrics"].items()}
        test = pd.read_csv(Path(args.test_dir) / "test.csv")
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError, pd.errors.ParserError) as error:
        fail(f"register: incomplete inputs, nothing registered: {error}")
        return

    evaluated = evaluated_answers(Path(args.evaluation_dir), Path(args.model_dir) / "model.tar.gz", len(test))
    onnx_bytes, serving = compile_onnx(model, metadata, test, evaluated)
    if onnx_bytes is not None:
        from importlib.metadata import version as installed

        # what loading the served model depends on: the gate deploys it only onto an image with the same
        metadata["libraries"] = {**metadata.get("libraries", {}), "onnxruntime": installed("onnxruntime")}
    print(f"register: serves with {serving['runtime']} ({serving['reason']})")
    publish(served_archive(model_dir, metadata, onnx_bytes, serving), args.served_model_uri)

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(args.experiment) is None:
        try:
            client.create_experiment(args.experiment, artifact_location=args.artifact_location or None)
        except mlflow.exceptions.MlflowException:  # a concurrent run created it first
            if client.get_experiment_by_name(args.experiment) is None:
                raise
    mlflow.set_experiment(args.experiment)
    ranked = evaluation.get("feature_importance", {}).get("features", [])
    tags = {
        "sagemaker.pipeline_execution_id": args.execution_id,
        "data.sha256": schema["source"]["sha256"],
        "data.rows": str(schema["source"]["rows"]),
        "model_class": metadata["model_class"],
        "model_data_uri": args.served_model_uri,
        "serving.runtime": serving["runtime"],
        "serving.reason": serving["reason"],
        **({"monitoring.baseline_uri": args.baseline_uri} if args.baseline_uri else {}),
        # the features the model leans on most (permutation importance on the test split), most first
        **({"feature_importance.top": ",".join(f["name"] for f in ranked[:5])} if ranked else {}),
        **({"sagemaker.tuning_job": args.tuning_job} if args.tuning_job else {}),
        **({"sagemaker.training_job": args.training_job} if args.training_job else {}),
        # the versions that trained it: the gate deploys it only onto an image with the same
        **{f"library.{name}": version for name, version in metadata.get("libraries", {}).items()},
    }
    with mlflow.start_run(run_name=f"{args.registered_model_name}-{args.execution_id}", tags=tags) as run:
        mlflow.log_params({"model_class": metadata["model_class"], **metadata["hyperparameters"]})
        mlflow.log_params({f"rows_{part}": count for part, count in schema["rows"].items()})
        mlflow.log_metrics(metric_values)
        mlflow.log_artifact(str(evaluation_path), artifact_path="evaluation")
        for plot in evaluation.get("plots", []):
            mlflow.log_artifact(str(Path(args.evaluation_dir) / plot), artifact_path="evaluation")
        mlflow.log_artifact(str(schema_path), artifact_path="data")
        if ranked:
            mlflow.log_dict(evaluation["feature_importance"], "evaluation/feature_importance.json")
        for name in ("statistics.json", "constraints.json"):  # the monitoring baseline, with the version
            if args.baseline_dir and (Path(args.baseline_dir) / name).is_file():
                mlflow.log_artifact(str(Path(args.baseline_dir) / name), artifact_path="monitoring")
        mlflow.log_text(json.dumps(serving, indent=2), "serving/serving.json")
        if onnx_bytes is not None:
            onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
            onnx_path.write_bytes(onnx_bytes)
            mlflow.log_artifact(str(onnx_path), artifact_path="serving")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="cloudpickle",
            signature=signature(metadata),
            pip_requirements=[f"{name}=={version}" for name, version in metadata.get("libraries", {}).items()]
            or [f"scikit-learn=={sklearn.__version__}", "pandas", "joblib"],
        )
    # The version is created last, in one registry call with all its tags, and only once the
    # artifact is durable: a job killed at any moment leaves no version without its model.
    make_durable(mlflow.get_logged_model(info.model_id).artifact_location)
    version_tags = {**tags, **{f"metric.{k}": str(v) for k, v in metric_values.items()}}
    registered = mlflow.register_model(info.model_uri, args.registered_model_name, tags=version_tags)
    version = str(registered.version)
    result = {
        "registered_model_name": args.registered_model_name,
        "version": version,
        "run_id": run.info.run_id,
        "model_uri": f"models:/{args.registered_model_name}/{version}",
        "model_data_uri": args.served_model_uri,
        "serving": serving,
        "metrics": metric_values,
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "registration.json").write_text(json.dumps(result, indent=2))
    print(f"register: {args.registered_model_name} version {version} (run {run.info.run_id})")


if __name__ == "__main__":
    main()
