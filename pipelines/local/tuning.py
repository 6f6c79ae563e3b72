"""A pipeline's TuningStep, executed locally: the step's own HyperParameterTuningJobConfig and
TrainingJobDefinition, run as real local training jobs.

The SDK's local executor refuses tuning (sagemaker-python-sdk #1960); `sdk_patch` routes the
step here. Like SageMaker's tuner, this:
- samples candidates from the ranges: Random (uniform, log-uniform for Logarithmic scaling) and
  Grid (every point) exactly; Bayesian with Optuna's TPE sampler; Hyperband with TPE and Optuna's
  Hyperband pruner over the objective the job prints after each stage; all seeded by RandomSeed;
- runs at most MaxParallelTrainingJobs training jobs at once, each through the SDK's local
  training job (the same container-contract runner as a TrainingStep);
- reads each job's metrics from its log with the definition's MetricDefinitions (the last match
  counts), stops Hyperband's losing trials (StopTrainingJob's semantics), tolerates failed trials
  and fails only when every trial failed, with the first failure's reason;
- answers with DescribeHyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob
  shapes, best first, so `BestTrainingJob` and `get_top_model_s3_uri(top_k=...)` resolve as on AWS.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.environ import SavedEnvironment
from pipelines.local.checkpoints import CHECKPOINTS_VARIABLE
from pipelines.local.container import stop_job

logger = logging.getLogger(__name__)
ACCOUNT_ARN = "arn:aws:sagemaker:{region}:{account}"
POLL_SECONDS = 0.05  # how often a Hyperband trial's log is read for new stage values


class TuningError(RuntimeError):
    """The tuning job cannot produce a model (every trial failed, or a malformed step)."""


@dataclass
class Trial:
    number: int
    name: str
    hyperparameters: dict[str, str]  # the tuned values, as the job received them
    status: str = "InProgress"  # Completed | Failed | Stopped, as TrainingJobStatus
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failure_reason: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended: datetime | None = None
    optuna_trial: Any = None
    reports: int = 0


class LocalTuningJob:
    """One HyperParameterTuningJob: `run()` returns its Describe and List responses merged."""

    def __init__(self, name: str, request: dict[str, Any], client: Any, region: str = "us-east-1") -> None:
        self.name = name
        self.request = request
        self.client = client
        self.config = request["HyperParameterTuningJobConfig"]
        definitions = request.get("TrainingJobDefinitions") or [request["TrainingJobDefinition"]]
        if len(definitions) != 1:
            raise TuningError("local tuning runs one training job definition (one estimator)")
        self.definition = definitions[0]
        limits = self.config["ResourceLimits"]
        self.max_jobs = int(limits["MaxNumberOfTrainingJobs"])
        self.parallel = max(1, min(int(limits.get("MaxParallelTrainingJobs", 1)), self.max_jobs))
        objective = self.config["HyperParameterTuningJobObjective"]
        self.metric, self.goal = objective["MetricName"], objective["Type"]
        self.patterns = {
            m["Name"]: re.compile(m["Regex"])
            for m in self.definition["AlgorithmSpecification"].get("MetricDefinitions", [])
        }
        if self.metric not in self.patterns:
            raise TuningError(f"the objective {self.metric} has no MetricDefinition to read it from the job's log")
        self.strategy = self.config.get("Strategy", "Bayesian")
        self.seed = self.config.get("RandomSeed")
        self.arn = f"{ACCOUNT_ARN.format(region=region, account='000000000000')}:hyper-parameter-tuning-job/{name}"
        self.trials: list[Trial] = []
        self.created = datetime.now(UTC)

    # -- sampling ---------------------------------------------------------------------------------
    def _ranges(self) -> list[tuple[str, str, dict[str, Any]]]:
        ranges = self.config.get("ParameterRanges", {})
        return [
            *(("integer", r["Name"], r) for r in ranges.get("IntegerParameterRanges", [])),
            *(("continuous", r["Name"], r) for r in ranges.get("ContinuousParameterRanges", [])),
            *(("categorical", r["Name"], r) for r in ranges.get("CategoricalParameterRanges", [])),
        ]

    def _study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = "maximize" if self.goal == "Maximize" else "minimize"
        if self.strategy == "Random":
            sampler: Any = optuna.samplers.RandomSampler(seed=self.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(5, self.max_jobs))
        pruner: Any = optuna.pruners.NopPruner()
        if self.strategy == "Hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=10, reduction_factor=3)
        # Hyperband puts each trial in a bracket by a hash of the study's name and the trial's number: a
        # name from the seed (Optuna's default is a fresh UUID) seeds which trials compete, as the sampler is
        name = f"sagegate-tuning-seed-{self.seed}" if self.seed is not None else None
        return optuna.create_study(study_name=name, direction=direction, sampler=sampler, pruner=pruner)

    def _grid(self) -> list[dict[str, str]]:
        names_values = [(name, r["Values"]) for kind, name, r in self._ranges() if kind == "categorical"]
        if len(names_values) != len(self._ranges()):
            raise TuningError("Grid search takes categorical parameter ranges only")
        names = [name for name, _ in names_values]
        return [dict(zip(names, point, strict=True)) for point in itertools.product(*(v for _, v in names_values))]

    def _suggest(self, trial: Any) -> dict[str, str]:
        """The candidate as SageMaker sends it: every value a string (categoricals as defined)."""
        values: dict[str, str] = {}
        for kind, name, r in self._ranges():
            scaling = r.get("ScalingType", "Auto")
            if kind == "categorical":
                values[name] = str(trial.suggest_categorical(name, r["Values"]))
            elif kind == "integer":
                low, high = int(r["MinValue"]), int(r["MaxValue"])
                values[name] = str(trial.suggest_int(name, low, high, log=scaling == "Logarithmic"))
            elif scaling == "ReverseLogarithmic":  # dense near MaxValue: log-uniform on 1 - x
                low, high = float(r["MinValue"]), float(r["MaxValue"])
                values[name] = repr(1 - trial.suggest_float(f"1-{name}", 1 - high, 1 - low, log=True))
            else:
                low, high = float(r["MinValue"]), float(r["MaxValue"])
                values[name] = repr(trial.suggest_float(name, low, high, log=scaling == "Logarithmic"))
        return values

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Every trial, then the answers. The trials' logs go where the run keeps job logs
        (SAGEGATE_JOB_LOGS), else to a folder of this call's own, removed afterwards."""
        environment = SavedEnvironment()
        scratch = None if os.environ.get("SAGEGATE_JOB_LOGS") else tempfile.mkdtemp(prefix="sagegate-tuning-")
        if scratch:
            environment.set({"SAGEGATE_JOB_LOGS": scratch})  # set before the trials' threads start
        self.logs = Path(os.environ["SAGEGATE_JOB_LOGS"])
        try:
            self._run_trials()
        finally:
            environment.restore()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.describe()

    def _run_trials(self) -> None:
        grid = self._grid() if self.strategy == "Grid" else None
        total = min(self.max_jobs, len(grid)) if grid is not None else self.max_jobs
        study = None if grid is not None else self._study()
        pending: dict[Future, Trial] = {}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="tuning-trial") as pool:
            while len(self.trials) < total or pending:
                while len(self.trials) < total and len(pending) < self.parallel:
                    number = len(self.trials) + 1
                    if grid is not None:
                        optuna_trial, values = None, grid[number - 1]
                    else:
                        assert study is not None
                        optuna_trial = study.ask()
                        values = self._suggest(optuna_trial)
                    trial = Trial(number, f"{self.name[:45]}-{number:03d}-{uuid.uuid4().hex[:8]}", values)
                    trial.optuna_trial = optuna_trial
                    self.trials.append(trial)
                    pending[pool.submit(self._run_trial, trial)] = trial
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    trial = pending.pop(future)
                    future.result()  # _run_trial records every outcome on the trial itself
                    if study is not None:
                        self._tell(study, trial)
                    self._announce(trial, total)

    def _tell(self, study: Any, trial: Trial) -> None:
        import optuna

        if trial.status == "Completed" and trial.objective is not None and math.isfinite(trial.objective):
            study.tell(trial.optuna_trial, trial.objective)
        elif trial.status == "Stopped":
            study.tell(trial.optuna_trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial.optuna_trial, state=optuna.trial.TrialState.FAIL)

    def _announce(self, trial: Trial, total: int) -> None:
        best = self.best()
        shown = f"{self.metric}={trial.objective:.6g}" if trial.objective is not None else trial.failure_reason
        best_text = f"best {best.objective:.6g} ({best.name})" if best and best.objective is not None else "no best yet"
        logger.info("trial %d/%d %s: %s; %s", trial.number, total, trial.status, shown, best_text)

    def _run_trial(self, trial: Trial) -> None:
        definition = self.definition
        hyperparameters = {
            **definition.get("StaticHyperParameters", {}),
            **trial.hyperparameters,
            "_tuning_objective_metric": self.metric,  # what SageMaker adds to every tuning trial
        }
        environment = dict(definition.get("Environment") or {})
        if os.environ.get(CHECKPOINTS_VARIABLE):  # one checkpoint prefix per trial, never shared
            environment[CHECKPOINTS_VARIABLE] = f"{os.environ[CHECKPOINTS_VARIABLE]}/{trial.name}"
        resources = definition.get("ResourceConfig") or definition.get("HyperParameterTuningResourceConfig", {})
        resources = {k: resources[k] for k in ("InstanceCount", "InstanceType", "VolumeSizeInGB") if k in resources}
        watcher = None
        if trial.optuna_trial is not None and self.strategy == "Hyperband":
            finished = threading.Event()
            watcher = threading.Thread(target=self._watch, args=(trial, finished), daemon=True)
        trial.started = datetime.now(UTC)
        try:
            if watcher:
                watcher.start()
            self.client.create_training_job(
                trial.name,
                AlgorithmSpecification=definition["AlgorithmSpecification"],
                OutputDataConfig=definition["OutputDataConfig"],
                ResourceConfig=resources,
                InputDataConfig=definition.get("InputDataConfig", []),
                Environment=environment,
                HyperParameters=hyperparameters,
                StoppingCondition=definition.get("StoppingCondition", {}),
                RoleArn=definition.get("RoleArn", ""),
            )
            trial.status = "Completed"
        except Exception as error:  # any trial failure is recorded; the job goes on
            trial.status, trial.failure_reason = "Failed", self._failure_reason(trial, error)
        finally:
            if watcher:
                finished.set()
                watcher.join()
            trial.ended = datetime.now(UTC)
        trial.metrics = self.read_metrics(self._log(trial).read_text() if self._log(trial).is_file() else "")
        trial.objective = trial.metrics.get(self.metric)
        if (self.logs / f"{trial.name}.stop").exists():
            trial.status = "Stopped"
        elif trial.status == "Completed" and trial.objective is None:
            trial.status, trial.failure_reason = "Failed", f"the job's log has no {self.metric} line"

    def _log(self, trial: Trial) -> Path:
        return self.logs / f"{trial.name}.log"

    def _failure_reason(self, trial: Trial, error: Exception) -> str:
        log = self._log(trial)
        lines = log.read_text().splitlines() if log.is_file() else []
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]  # the job's fail()
        return (errors or [f"{type(error).__name__}: {error}"])[-1]

    def read_metrics(self, text: str) -> dict[str, float]:
        """Each metric's last match in the log, as SageMaker reads a training job's metrics."""
        metrics = {}
        for name, pattern in self.patterns.items():
            found = pattern.findall(text)
            if found:
                value = found[-1] if isinstance(found[-1], str) else found[-1][0]
                try:
                    metrics[name] = float(value)
                except ValueError:
                    continue
        return metrics

    def _watch(self, trial: Trial, finished: threading.Event) -> None:
        """Hyperband: report each new objective line as a step; stop the job when the pruner says so."""
        pattern = self.patterns[self.metric]
        while not finished.wait(POLL_SECONDS):
            log = self._log(trial)
            values = pattern.findall(log.read_text()) if log.is_file() else []
            for step in range(trial.reports, len(values)):
                value = values[step] if isinstance(values[step], str) else values[step][0]
                trial.optuna_trial.report(float(value), step + 1)
            trial.reports = len(values)
            if trial.reports and trial.optuna_trial.should_prune():
                if stop_job(self.logs, trial.name):
                    logger.info("trial %d stopped early at stage %d", trial.number, trial.reports)
                    return

    # -- answers ----------------------------------------------------------------------------------
    def ranked(self) -> list[Trial]:
        """Completed trials best first, then stopped, then failed (the List API sorted by objective)."""
        sign = -1 if self.goal == "Maximize" else 1

        def key(trial: Trial) -> tuple[int, float, int]:
            rank = {"Completed": 0, "Stopped": 1}.get(trial.status, 2)
            value = trial.objective if trial.objective is not None and math.isfinite(trial.objective) else math.inf
            return rank, sign * value if value != math.inf else math.inf, trial.number

        return sorted(self.trials, key=key)

    def best(self) -> Trial | None:
        return next((t for t in self.ranked() if t.status == "Completed" and t.objective is not None), None)

    def summary(self, trial: Trial) -> dict[str, Any]:
        """HyperParameterTrainingJobSummary."""
        entry: dict[str, Any] = {
            "TrainingJobName": trial.name,
            "TrainingJobArn": self.arn.replace(f"hyper-parameter-tuning-job/{self.name}", f"training-job/{trial.name}"),
            "TuningJobName": self.name,
            "CreationTime": trial.started,
            "TrainingStartTime": trial.started,
            "TrainingEndTime": trial.ended,
            "TrainingJobStatus": trial.status,
            "TunedHyperParameters": trial.hyperparameters,
            "ObjectiveStatus": "Succeeded" if trial.objective is not None else "Failed",
        }
        if trial.objective is not None:
            entry["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": self.goal,
                "MetricName": self.metric,
                "Value": trial.objective,
            }
        if trial.failure_reason:
            entry["FailureReason"] = trial.failure_reason
        return entry

    def describe(self) -> dict[str, Any]:
        """DescribeHyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob, merged as the
        pipeline's TuningStep properties are. Raises TuningError when no trial produced a model."""
        counters = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
        for trial in self.trials:
            counters["NonRetryableError" if trial.status == "Failed" else trial.status] += 1
        best = self.best()
        if best is None:
            failed = [t for t in self.trials if t.status == "Failed"]
            reason = failed[0].failure_reason if failed else "no trial completed"
            raise TuningError(f"every trial of {self.name} failed ({len(self.trials)}); the first: {reason}")
        objectives = [t.objective is not None for t in self.trials]
        return {
            "HyperParameterTuningJobName": self.name,
            "HyperParameterTuningJobArn": self.arn,
            "HyperParameterTuningJobConfig": self.config,
            "TrainingJobDefinition": self.definition,
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": self.created,
            "HyperParameterTuningEndTime": datetime.now(UTC),
            "LastModifiedTime": datetime.now(UTC),
            "TrainingJobStatusCounters": counters,
            "ObjectiveStatusCounters": {"Succeeded": sum(objectives), "Pending": 0, "Failed": objectives.count(False)},
            "BestTrainingJob": self.summary(best),
            "TrainingJobSummaries": [self.summary(t) for t in self.ranked()],
        }


def trials_table(properties: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials of a TuningStep's properties as plain rows (the run record keeps them)."""
    rows = []
    for summary in properties.get("TrainingJobSummaries", []):
        objective = summary.get("FinalHyperParameterTuningJobObjectiveMetric", {})
        rows.append(
            {
                "trial": int(summary["TrainingJobName"].rsplit("-", 2)[-2]),
                "training_job": summary["TrainingJobName"],
                "status": summary["TrainingJobStatus"],
                "objective": objective.get("Value"),
                "hyperparameters": {k: _plain(v) for k, v in summary["TunedHyperParameters"].items()},
                "failure_reason": summary.get("FailureReason", ""),
                "started": summary["TrainingStartTime"].isoformat(),
                "ended": summary["TrainingEndTime"].isoformat() if summary.get("TrainingEndTime") else None,
                "seconds": round((summary["TrainingEndTime"] - summary["TrainingStartTime"]).total_seconds(), 2)
                if summary.get("TrainingEndTime")
                else None,
            }
        )
    return sorted(rows, key=lambda row: row["trial"])


def _plain(value: str) -> Any:
    """The value as the training script reads it: a framework tuner JSON-encodes categorical values
    ('"3"'), the container hands the text `3` over as an argument, and train.py decodes that to 3."""
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"True": True, "False": False, "None": None}.get(value, value)  # Python's spelling, as train.py
    return value
