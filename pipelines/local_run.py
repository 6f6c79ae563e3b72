"""`sagegate run` in local mode: stage the data, execute the definition, record the outcome.

The pipeline is the one `sagegate pipeline definition` prints (minus the Model Registry step)
and runs through the SDK's own LocalPipelineSession executor; this module only prepares its
surroundings (local S3, MLflow store, job logs) and turns the execution into a run record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.config import ConfigError, ModelConfig
from pipelines.definition import TRAIN_STEP, TUNE_STEP, build_pipeline
from pipelines.environ import SavedEnvironment
from pipelines.local import forkserver
from pipelines.local.checkpoints import CHECKPOINTS_VARIABLE
from pipelines.local.container import CODE_CACHE_VARIABLE
from pipelines.local.s3 import LocalS3, staged_in_background
from pipelines.local.sdk_patch import GRAPH_MESSAGE, code_fetched_ahead, uploads_behind
from pipelines.local.tuning import logger as tuning_progress
from pipelines.local.tuning import trials_table
from pipelines.registry import PreparedStore
from pipelines.staging import input_uris, local_files
from pipelines.state import Project, StateHome
from pipelines.statefiles import (
    StateFileError,
    process_alive,
    process_token,
    read_json,
    read_records,
    write_bytes,
    write_json,
)

Progress = Callable[[str, str, float | None], None]
SCRATCH_OWNER = ".owner"  # in a run's job folder: the process token of the run it belongs to


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
    """One `sagegate run`: written when it starts (status Executing), updated as steps finish."""

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
    attempt: str = ""  # the record's file name; run_id becomes the pipeline execution id once known
    owner: str = ""  # process token of the sagegate process running it
    platform: str = "local"  # or "sagemaker": executed by SageMaker (remote_run), not by this machine
    execution_arn: str | None = None  # SageMaker's pipeline execution (remote runs)
    # with a `tuning` block: the tuning job, its objective and every trial (pipelines.local.tuning.trials_table)
    tuning: dict[str, Any] | None = None
    # the execution's step graph as the SDK's executor built it: {"steps": [{name, type}], "edges": [[from, to]]}
    graph: dict[str, Any] | None = None

    @classmethod
    def starting(cls, config: ModelConfig, project: Project, run_id: str, **fields: Any) -> RunRecord:
        """A record as its run starts: Executing, stamped now."""
        return cls(
            run_id=run_id,
            model=config.name,
            pipeline=project.pipeline_name(config.name),
            status="Executing",
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            duration_seconds=0.0,
            **fields,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        data = dict(data)
        steps = [StepRecord(**step) for step in data.pop("steps", [])]
        return cls(**data, steps=steps)

    def settled(self) -> RunRecord:
        """As `sagegate runs` shows it: a run whose process died mid-way is Stopped, not Executing."""
        if self.status != "Executing" or self.platform != "local" or (self.owner and process_alive(self.owner)):
            return self
        pid = self.owner.partition(":")[0] or "?"
        reason = f"the sagegate process (pid {pid}) ended before the run finished (killed or crashed)"
        steps = [
            StepRecord(s.name, "Stopped", s.duration_seconds, s.failure_reason) if s.status == "Executing" else s
            for s in self.steps
        ]
        return replace(self, status="Stopped", failure_reason=reason, steps=steps)


class _StepProgress(logging.Handler):
    """Turns the SDK executor's step log lines into progress callbacks as steps start and finish."""

    def __init__(self, progress: Progress, on_graph: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(logging.INFO)
        self.progress, self.on_graph = progress, on_graph
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.msg, str) or not record.args:
            return
        step = str(record.args[0])
        if record.msg == GRAPH_MESSAGE:
            self.on_graph(json.loads(step))
        elif record.name == tuning_progress.name:  # "trial 3/12 Completed: ..." while the TuneModel step runs
            self.progress(record.getMessage(), "Trial", None)
        elif record.msg.startswith("Starting pipeline step"):
            self.started[step] = time.monotonic()
            self.progress(step, "Executing", None)
        elif record.msg.startswith("Pipeline step '%s' "):
            status = "Succeeded" if "SUCCEEDED" in record.msg else "Failed"
            began = self.started.get(step)
            self.progress(step, status, time.monotonic() - began if began else None)


class _RecordProgress:
    """Keeps the run record on disk current as steps start and finish (what a killed run leaves)."""

    def __init__(self, home: StateHome, record: RunRecord, progress: Progress | None) -> None:
        self.home, self.record, self.progress = home, record, progress

    def __call__(self, step: str, status: str, seconds: float | None) -> None:
        if status == "Trial":  # a tuning trial's outcome: shown, kept in the record when the step ends
            if self.progress:
                self.progress(step, status, seconds)
            return
        steps = [s for s in self.record.steps if s.name != step]
        self.record.steps = [*steps, StepRecord(step, status, round(seconds, 2) if seconds else None)]
        save_record(self.home, self.record)
        if self.progress:
            self.progress(step, status, seconds)

    def graph(self, graph: dict[str, Any]) -> None:
        self.record.graph = graph
        save_record(self.home, self.record)


def _scratch_folder(home: StateHome, attempt: str) -> Path:
    """The run's folder for its jobs (the SDK's container root), removed when the run ends. A run killed
    outright leaves its own behind (the splits and the model: as large as the data), so each run first
    removes those of runs whose process is gone. A folder appears with its owner's process token inside
    (made aside, then renamed): one without is never taken for a dead run's."""
    home.jobs.mkdir(parents=True, exist_ok=True)
    for folder in home.jobs.iterdir():
        try:
            owner = (folder / SCRATCH_OWNER).read_text()
        except OSError:
            continue
        if not process_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
    aside = Path(tempfile.mkdtemp(dir=home.jobs, prefix=".new-"))
    (aside / SCRATCH_OWNER).write_text(process_token())
    scratch = home.jobs / attempt
    try:
        os.rename(aside, scratch)
    except OSError:  # a caller's attempt id whose folder exists already: it is this run's now
        shutil.rmtree(aside, ignore_errors=True)
        write_bytes(scratch / SCRATCH_OWNER, process_token().encode())  # visible already: replaced whole
    return scratch


def _read_in_place(config: ModelConfig, scratch: Path) -> dict[str, str]:
    """file:// sources for the run's local data files: SageMaker's local mode reads a file:// input where
    it is, so the preprocessing job does not wait for the data's upload nor download it back (0.6 s and
    0.3 s for 40 MB). Each file is linked (else copied) into a folder of its own under the name it is
    staged by: the job sees what it would see of the staged object. Missing files: FileNotFoundError."""
    sources = {}
    for parameter, (path, key) in local_files(config).items():
        folder = scratch / "inputs" / parameter
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / PurePosixPath(key).name
        try:
            os.link(path, target)
        except OSError:  # another filesystem
            shutil.copyfile(path, target)
        sources[parameter] = f"file://{target.resolve()}"
    return sources


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
    store: PreparedStore | None = None,
    attempt: str | None = None,
    checked: Callable[[], None] | None = None,
) -> RunRecord:
    """`attempt`: the record's id, when the caller must know it before the run starts (StartPipelineExecution);
    `checked`: the caller's checks, done meanwhile and awaited before the first step: a ConfigError or
    RunError from it means the run never started. The data's staged copy uploads once the model is
    trained (`staged_in_background`)."""
    home.ensure()
    started = time.monotonic()
    attempt = attempt or uuid.uuid4().hex[:12]
    logs = attempt_logs(home, attempt)
    scratch = _scratch_folder(home, attempt)  # this run's job containers; concurrent runs have their own
    code_cache = scratch / ".code"  # the training code, unpacked once for the run's training jobs
    record = RunRecord.starting(
        config,
        project,
        attempt,
        parameters=dict(parameters or {}),
        attempt=attempt,
        owner=process_token(),
        artifacts={"logs": str(logs)},
    )
    logs.mkdir(parents=True, exist_ok=True)
    failure_log = logs / "failures.jsonl"
    job_environment = SavedEnvironment()
    job_environment.set(
        {
            "SAGEGATE_FAILURE_LOG": str(failure_log),
            "SAGEGATE_JOB_LOGS": str(logs),
            CODE_CACHE_VARIABLE: str(code_cache),
        }
    )
    if config.training.checkpoints:  # one prefix per model: the next run of the same data and settings resumes
        job_environment.set({CHECKPOINTS_VARIABLE: f"s3://{project.bucket}/checkpoints/{config.name}/local"})
    # the staged copy is what the pipeline's parameters default to (the next scheduled run's data)
    staging = staged_in_background(home, config, project)

    def progress_then_stage(step: str, status: str, seconds: float | None) -> None:
        if progress:
            progress(step, status, seconds)
        if status == "Succeeded" and step in (TRAIN_STEP, TUNE_STEP):
            # the evaluation leaves a core idle; begun with training, the upload shared the S3 server with
            # the train step's downloads and slowed that step by ~0.3 s (200k rows)
            staging.start()

    recorder = _RecordProgress(home, record, progress_then_stage)
    handler = _StepProgress(recorder, recorder.graph)
    sdk_logger = logging.getLogger("sagemaker.local.entities")
    saved = (sdk_logger.level, sdk_logger.propagate)
    sdk_logger.addHandler(handler)
    sdk_logger.setLevel(logging.INFO)
    sdk_logger.propagate = False
    tuning_progress.addHandler(handler)
    tuning_progress.setLevel(logging.INFO)
    tuning_progress.propagate = False
    try:
        # the register job needs the MLflow store, nothing before it
        store = store or PreparedStore(home)
        # the CLI starts the fork server before its own imports; a caller that did not gets one here
        jobs = contextlib.nullcontext() if os.environ.get(forkserver.SOCKET_VARIABLE) else forkserver.running(logs)
        with jobs, LocalS3(home, project.region) as s3:
            s3.ensure_bucket(project.bucket)
            try:
                in_place = _read_in_place(config, scratch)
            except FileNotFoundError as error:
                raise RunError(str(error)) from None
            record.parameters = {
                **input_uris(config, project),
                "MlflowTrackingUri": home.mlflow_tracking_uri,
                "MlflowArtifactLocation": home.mlflow_artifact_location(project.registered_model(config.name)),
                **(parameters or {}),
            }
            values = {**record.parameters, **{k: v for k, v in in_place.items() if k not in (parameters or {})}}
            save_record(home, record)
            from pipelines.sessions import local_session

            session = local_session(project, config.name, scratch)
            pipeline = build_pipeline(config, project, session, local=True)
            pipeline.upsert(role_arn=project.training_role_arn)
            if checked:
                checked()
            problem = store.problem()
            if problem:
                raise RunError(f"the MLflow store {home.mlflow_db} could not be prepared: {problem}")
            # each step's outputs reach S3 while the next step runs; the training code is unpacked meanwhile
            with uploads_behind(session), code_fetched_ahead(code_cache):
                execution = pipeline.start(parameters=values)
            _record(record, execution, session, config, project, s3, failure_log)
            staging.result()
            if record.tuning:
                _report_tuning(home, project.registered_model(config.name), record)
    except (RunError, ConfigError):  # the run never started: nothing to keep
        record_path(home, record).unlink(missing_ok=True)
        shutil.rmtree(logs, ignore_errors=True)
        raise
    except BaseException as error:
        record.status, record.failure_reason = "Failed", f"{type(error).__name__}: {error}"
        raise
    finally:
        sdk_logger.removeHandler(handler)
        tuning_progress.removeHandler(handler)
        sdk_logger.level, sdk_logger.propagate = saved
        job_environment.restore()
        staging.cancel()  # a run that ended before its data was due: no upload
        shutil.rmtree(scratch, ignore_errors=True)  # the SDK leaves its container roots behind
        record.duration_seconds = round(time.monotonic() - started, 2)
        if record_path(home, record).exists():
            save_record(home, record)
    return record


def _record(
    record: RunRecord,
    execution: Any,
    session: Any,
    config: ModelConfig,
    project: Project,
    s3: LocalS3,
    failure_log: Path,
) -> None:
    """Fill the record from the finished execution: steps, reasons, metrics, registration.
    Artifacts are named by their s3:// locations (`sagegate s3 ls|cp`, or the AWS CLI, reads them)."""
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
        if step["StepStatus"] == "Failed" and step["StepName"] == TUNE_STEP:
            job_reason = reason  # every trial failed: the tuner's message names the first trial's reason
        elif step["StepStatus"] == "Failed" and job_failure:
            reason = job_reason = job_failure
        if "Condition" in metadata:
            gate = "passed" if str(metadata["Condition"].get("Outcome")).lower() == "true" else "failed"
        if step["StepName"] == TRAIN_STEP and job and step["StepStatus"] == "Succeeded":
            model_uri = session.sagemaker_client.describe_training_job(job)["ModelArtifacts"]["S3ModelArtifacts"]
        if step["StepName"] == TUNE_STEP and step["StepStatus"] == "Succeeded":
            tuned = execution.step_execution[TUNE_STEP].properties
            best = tuned["BestTrainingJob"]["TrainingJobName"]
            model_uri = session.sagemaker_client.describe_training_job(best)["ModelArtifacts"]["S3ModelArtifacts"]
            record.tuning = {
                "job": tuned["HyperParameterTuningJobName"],
                "strategy": tuned["HyperParameterTuningJobConfig"]["Strategy"],
                "objective": tuned["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"],
                "goal": tuned["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Type"],
                "best_training_job": best,
                "trials": trials_table(tuned),
            }
        duration = round(end - start, 2) if start and end else None
        steps.append(StepRecord(step["StepName"], step["StepStatus"], duration, reason))
    record.run_id = run_id
    record.status = description["PipelineExecutionStatus"]
    record.steps = steps
    record.failure_reason = job_reason or description.get("FailureReason")
    record.gate = gate
    bucket = f"s3://{project.bucket}"
    evaluation_uri = project.evaluation_uri(config.name, run_id)
    evaluation = _read_json(s3, evaluation_uri)
    if evaluation:
        record.metrics = {name: entry["value"] for name, entry in evaluation["metrics"].items()}
        record.artifacts["evaluation"] = evaluation_uri.rsplit("/", 1)[0] + "/"
    registration = _read_json(s3, f"{bucket}/models/{config.name}/registrations/{run_id}/registration.json")
    if registration:
        record.registered_model = registration["registered_model_name"]
        record.registered_version = registration["version"]
        record.artifacts["mlflow_model"] = registration["model_uri"]
        if "model_data_uri" in registration:
            record.artifacts["served_model"] = registration["model_data_uri"]
    if model_uri:
        record.artifacts["model"] = model_uri
    record.artifacts["splits"] = f"{bucket}/training-data/{config.name}/{run_id}/"


def _report_tuning(home: StateHome, experiment: str, record: RunRecord) -> None:
    """The trials plot beside the run records, and the tuning job's MLflow runs (parent + a child per trial)."""
    from pipelines import tuning_report

    assert record.tuning is not None
    path = tuning_report.plot(record.tuning, home.runs / "tuning" / f"{record.run_id}.png")
    record.artifacts["tuning_plot"] = str(path)
    parent = tuning_report.log_to_mlflow(home, experiment, record.run_id, record.tuning, path)
    record.tuning["mlflow_parent_run"] = parent


def _read_json(s3: LocalS3, uri: str) -> dict[str, Any] | None:
    """A job's JSON output, if it wrote one."""
    body = s3.read(uri)
    return json.loads(body) if body is not None else None


def record_path(home: StateHome, record: RunRecord) -> Path:
    return attempt_path(home, record.attempt or record.run_id)


def attempt_path(home: StateHome, attempt: str) -> Path:
    """The record of the run with this attempt id (its file name)."""
    return home.runs / f"{attempt}.json"


def attempt_logs(home: StateHome, attempt: str) -> Path:
    """The folder of a run's job logs (and of the start log of a run started through the API)."""
    return home.runs / "logs" / attempt


def save_record(home: StateHome, record: RunRecord) -> Path:
    path = record_path(home, record)
    write_json(path, record.to_json())
    return path


def load_record(home: StateHome, attempt: str) -> RunRecord:
    """One run by its attempt id (settled as `list_records` settles it); FileNotFoundError if none."""
    path = attempt_path(home, attempt)
    data = read_json(path) if path.is_file() else None
    if data is None:
        raise FileNotFoundError(f"no run record {path}")
    try:
        return RunRecord.from_json(data).settled()
    except (TypeError, ValueError, AttributeError) as error:
        raise StateFileError(f"{path}: not a run record: {error}") from None


def list_records(home: StateHome) -> tuple[list[RunRecord], list[str]]:
    """Every run (killed ones as Stopped), oldest first, and a problem line per unreadable record."""
    loaded, problems = read_records(home.runs)
    records = []
    for path, data in loaded:
        try:
            records.append(RunRecord.from_json(data).settled())
        except (TypeError, ValueError, AttributeError) as error:
            problems.append(str(StateFileError(f"{path}: not a run record: {error}")))
    return sorted(records, key=lambda r: r.started_at), problems
