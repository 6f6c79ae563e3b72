"""Registered model versions for gate tests: real artifacts, written where a pipeline run puts them.

Running the whole pipeline for every gate scenario would cost half a minute each; instead a
version is made the way the register job makes it (model.tar.gz in the S3 mirror, evaluation
report, MLflow version with the same tags), with metrics chosen by the test.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import joblib
import mlflow
from sklearn.linear_model import LogisticRegression

from pipelines.config import ModelConfig, load_config
from pipelines.local.s3 import LocalS3
from pipelines.state import Project, StateHome

ROOT = Path(__file__).resolve().parent.parent


def trained_with() -> dict[str, str]:
    """The `library.*` tags a training job here records: the local (= runtime image) versions."""
    import importlib.util

    from pipelines.containers import container_code, locked_versions

    spec = importlib.util.spec_from_file_location("train", container_code("train", "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return {f"library.{name}": locked_versions()[name] for name in train.LIBRARIES}


def breast_cancer(*overrides: str) -> ModelConfig:
    return load_config(ROOT / "models" / "breast-cancer.yaml", list(overrides))


def register_version(
    home: StateHome, project: Project, config: ModelConfig, metrics: dict[str, float], *, model_data: bool = True
) -> str:
    """Write a model, its evaluation report and an MLflow version; return the version number."""
    execution = uuid.uuid4().hex[:12]
    model_key = f"models/{config.name}/{execution}/output/model.tar.gz"
    home.ensure()
    with LocalS3(home, project.region) as s3:
        s3.ensure_bucket(project.bucket)
        if model_data:
            buffer = io.BytesIO()
            joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), buffer)
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                info = tarfile.TarInfo("model.joblib")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
            s3.client.put_object(Bucket=project.bucket, Key=model_key, Body=archive.getvalue())
        report = {"metrics": {name: {"value": value} for name, value in metrics.items()}}
        s3.client.put_object(
            Bucket=project.bucket, Key=f"evaluation/{config.name}/{execution}/evaluation.json", Body=json.dumps(report)
        )
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    name = project.registered_model(config.name)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    tags = {
        "sagemaker.pipeline_execution_id": execution,
        "model_data_uri": f"s3://{project.bucket}/{model_key}",
        **{f"metric.{k}": str(v) for k, v in metrics.items()},
        **trained_with(),
    }
    return str(client.create_model_version(name, source=f"s3://{project.bucket}/{model_key}", tags=tags).version)
