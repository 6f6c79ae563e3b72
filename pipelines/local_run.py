"""`sagegate run` in local mode: stage the data, execute the definition, record the outcome.

The pipeline is the one `sagegate pipeline definition` prints (minus the Model Registry step)
and runs through the SDK's own LocalPipelineSession executor; this module only prepares its
surroundings (local S3, MLflow store, job logs) and turns the execution into a run record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig
from pipelines.definition import build_pipeline, registered_model_name
from pipelines.local.s3 import LocalS3
from pipelines.state import Project, StateHome

Progress = Callable[[str, str, float | None], None]


class RunError(RuntimeError):
    """A run that could not start (missing data file, unreadable store...)."""


@dataclass
class StepRecord:
    name: str
    status: str
    duration_seconds: float | None = None
    failure_reason: str | None = None


@dataclass
class RunRecord:
    run_id: str
    model: str
    pipeline: str
    status: str
    started_at: str
    duration_seconds: float
    parameters: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    failure_reason: str | None = None
    gate: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    registered_model: str | None = None
    registered_version: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        steps = [StepRecord(**step) for step in data.pop("steps", [])]
        return cls(**data, steps=steps)


class _StepProgress(logging.Handler):
    """Turns the SDK executor's step log lines into progress callbacks as steps finish."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.msg, str) or not record.args:
            return
        step = str(record.args[0])
        if record.msg.startswith("Starting pipeline step"):
            self.started[step] = time.monotonic()
            self.progress(step, "Executing", None)
        elif record.msg.startswith("Pipeline step '%s' "):
            status = "Succeeded" if "SUCCEEDED" in record.msg else "Failed"
            began = self.started.get(step)
            self.progress(step, status, time.monotonic() - began if began else None)


def _stage_data(config: ModelConfig, project: Project, s3: LocalS3) -> str:
    source = config.data.source
    if source.startswith("s3://"):
        return source
    path = Path(source)
    if not path.is_file():
        raise RunError(f"data.source: file not found: {path}")
    s3.client.upload_file(str(path), project.bucket, config.staged_data_key)
    return f"s3://{project.bucket}/{config.staged_data_key}"


def _ensure_experiment(home: StateHome, name: str) -> None:
    """Local experiments keep artifacts in the state folder (the server default would be ./mlruns)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(home.mlflow_artifacts / name).as_uri())


def _read_json(s3: LocalS3, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except s3.client.exceptions.NoSuchKey:
        return None


def _job_failures(log: Path) -> dict[str, str]:
    if not log.is_file():
        return {}
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {entry["job"]: entry["reason"] for entry in entries}


def run_local(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    *,
    parameters: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> RunRecord:
    home.ensure()
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    attempt = uuid.uuid4().hex[:8]
    logs = home.runs / "logs" / attempt
    logs.mkdir(parents=True, exist_ok=True)
    failure_log = logs / "failures.jsonl"
    os.environ["SAGEGATE_FAILURE_LOG"] = str(failure_log)
    os.environ["SAGEGATE_JOB_LOGS"] = str(logs)
    handler = _StepProgress(progress) if progress else None
    sdk_logger = logging.getLogger("sagemaker.local.entities")
    saved = (sdk_logger.level, sdk_logger.propagate)
    if handler:
        sdk_logger.addHandler(handler)
        sdk_logger.setLevel(logging.INFO)
        sdk_logger.propagate = False
    try:
        with LocalS3(home.s3, project.region) as s3:
            s3.ensure_bucket(project.bucket)
            values = {
                "InputDataUri": _stage_data(config, project, s3),
                "MlflowTrackingUri": home.mlflow_tracking_uri,
                **(parameters or {}),
            }
            model_name = registered_model_name(config, project)
            _ensure_experiment(home, model_name)
            from pipelines.sessions import local_session

            session = local_session(project, config.name, home.jobs)
            pipeline = build_pipeline(config, project, session, local=True)
            pipeline.upsert(role_arn=project.training_role_arn)
            execution = pipeline.start(parameters=values)
            record = _record(execution, session, s3, config, project, home, values, started_at, failure_log)
            record.duration_seconds = round(time.monotonic() - started, 2)
    finally:
        if handler:
            sdk_logger.removeHandler(handler)
            sdk_logger.level, sdk_logger.propagate = saved
        os.environ.pop("SAGEGATE_FAILURE_LOG", None)
        os.environ.pop("SAGEGATE_JOB_LOGS", None)
        for job_dir in home.jobs.iterdir():  # the SDK leaves its container roots behind
            shutil.rmtree(job_dir, ignore_errors=True)
        if "record" not in locals():  # the run never started: no record to attach logs to
            shutil.rmtree(logs, ignore_errors=True)
    final_logs = home.runs / "logs" / record.run_id
    logs.rename(final_logs)
    record.artifacts["logs"] = str(final_logs)
    save_record(home, record)
    return record


def _record(
    execution: Any,
    session: Any,
    s3: LocalS3,
    config: ModelConfig,
    project: Project,
    home: StateHome,
    values: dict[str, Any],
    started_at: str,
    failure_log: Path,
) -> RunRecord:
    description = execution.describe()
    run_id = description["PipelineExecutionArn"]
    failures = _job_failures(failure_log)
    steps, gate, job_reason, model_uri = [], None, None, None
    for step in sorted(execution.list_steps()["PipelineExecutionSteps"], key=lambda s: s.get("StartTime") or 0):
        start, end = step.get("StartTime"), step.get("EndTime")
        reason = step.get("FailureReason")
        metadata = step.get("Metadata", {})
        job = next((m.get("Arn") for m in metadata.values() if isinstance(m, dict) and m.get("Arn")), None)
        job_failure = next((text for name, text in failures.items() if name.startswith(f"{step['StepName']}-")), None)
        if step["StepStatus"] == "Failed" and job_failure:
            reason = job_reason = job_failure
        if "Condition" in metadata:
            gate = "passed" if str(metadata["Condition"].get("Outcome")).lower() == "true" else "failed"
        if step["StepName"] == "TrainModel" and job and step["StepStatus"] == "Succeeded":
            model_uri = session.sagemaker_client.describe_training_job(job)["ModelArtifacts"]["S3ModelArtifacts"]
        duration = round(end - start, 2) if start and end else None
        steps.append(StepRecord(step["StepName"], step["StepStatus"], duration, reason))
    record = RunRecord(
        run_id=run_id,
        model=config.name,
        pipeline=project.pipeline_name(config.name),
        status=description["PipelineExecutionStatus"],
        started_at=started_at,
        duration_seconds=0.0,
        parameters=values,
        steps=steps,
        failure_reason=job_reason or description.get("FailureReason"),
        gate=gate,
    )
    bucket = project.bucket
    evaluation = _read_json(s3, bucket, f"evaluation/{config.name}/{run_id}/evaluation.json")
    if evaluation:
        record.metrics = {name: entry["value"] for name, entry in evaluation["metrics"].items()}
        record.artifacts["evaluation"] = str(home.s3 / bucket / "evaluation" / config.name / run_id)
    registration = _read_json(s3, bucket, f"models/{config.name}/registrations/{run_id}/registration.json")
    if registration:
        record.registered_model = registration["registered_model_name"]
        record.registered_version = registration["version"]
        record.artifacts["mlflow_model"] = registration["model_uri"]
    if model_uri:
        record.artifacts["model"] = str(home.local_path(model_uri))
    record.artifacts["splits"] = str(home.s3 / bucket / "training-data" / config.name / run_id)
    return record


def save_record(home: StateHome, record: RunRecord) -> Path:
    path = home.runs / f"{record.run_id}.json"
    path.write_text(json.dumps(record.to_json(), indent=2))
    return path


def list_records(home: StateHome) -> list[RunRecord]:
    if not home.runs.is_dir():
        return []
    records = [RunRecord.from_json(json.loads(p.read_text())) for p in home.runs.glob("*.json")]
    return sorted(records, key=lambda r: r.started_at)
