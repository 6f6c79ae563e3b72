"""Register job: log the run and the model to MLflow and add a version to its registry.

Runs in every mode (locally against a sqlite store, on AWS against a SageMaker managed
MLflow tracking server ARN), only after the quality gate passed. Image: the stock
scikit-learn image plus MLflow (see Dockerfile); imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import joblib


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
    parser.add_argument("--output-dir", default="/opt/ml/processing/registration")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--artifact-location", default="", help="new experiments only; empty = server default")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--registered-model-name", required=True)
    parser.add_argument("--execution-id", required=True)
    parser.add_argument("--model-data-uri", default="")
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
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError) as error:
        fail(f"register: incomplete inputs, nothing registered: {error}")
        return

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(args.experiment) is None:
        try:
            client.create_experiment(args.experiment, artifact_location=args.artifact_location or None)
        except mlflow.exceptions.MlflowException:  # a concurrent run created it first
            if client.get_experiment_by_name(args.experiment) is None:
                raise
    mlflow.set_experiment(args.experiment)
    tags = {
        "sagemaker.pipeline_execution_id": args.execution_id,
        "data.sha256": schema["source"]["sha256"],
        "data.rows": str(schema["source"]["rows"]),
        "model_class": metadata["model_class"],
        "model_data_uri": args.model_data_uri,
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
        "metrics": metric_values,
    }
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "registration.json").write_text(json.dumps(result, indent=2))
    print(f"register: {args.registered_model_name} version {version} (run {run.info.run_id})")


if __name__ == "__main__":
    main()
