"""Hyperparameter tuning: the YAML block, the AWS TuningStep, and the same step executed locally.

The local runs share one state folder; each strategy runs the bundled tuned example for real
(trials are local training jobs) with fewer trials than the example's 12."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.config import ConfigError, load_config
from pipelines.containers import container_code
from pipelines.definition import definition_json
from pipelines.local.s3 import LocalS3
from pipelines.local.tuning import LocalTuningJob
from pipelines.local_run import RunRecord, run_local
from pipelines.registry import list_versions
from pipelines.state import Project, StateHome
from tests.conftest import MODELS

TUNED = MODELS / "breast-cancer-tuned.yaml"
MODEL = "sagegate-development-breast-cancer-tuned"
QUICK = ["tuning.max_jobs=6", "tuning.max_parallel_jobs=2", "tuning.ranges.n_estimators.max=120"]
STRATEGIES = {
    "bayesian": [],
    "random": ["tuning.strategy=random"],
    # longer trials: the pruner sees several stages of each before it ends
    "hyperband": [
        "tuning.strategy=hyperband",
        "tuning.ranges.n_estimators.min=150",
        "tuning.ranges.n_estimators.max=300",
    ],
    "grid": [
        "tuning.strategy=grid",
        "tuning.ranges={max_depth: {type: categorical, values: [3, 5, 8]},"
        " max_features: {type: categorical, values: [sqrt, log2]}}",
    ],
}


# -- the YAML block ---------------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown hyperparameter": (
        ["tuning.ranges.bogus={type: integer, min: 1, max: 2}"],
        "tuning.ranges.bogus: RandomForestClassifier has no such parameter",
    ),
    "a range end the estimator refuses": (
        ["tuning.ranges.max_depth.min=0"],
        "tuning.ranges.max_depth: 0 is refused: The 'max_depth' parameter of RandomForestClassifier must be",
    ),
    "a category the estimator refuses": (
        ["tuning.ranges.max_features.values=[sqrt, most]"],
        "tuning.ranges.max_features: 'most' is refused",
    ),
    "a metric the task does not report": (
        ["tuning.objective.metric=r2"],
        "tuning.objective.metric: classification training reports accuracy, f1, precision, recall, auc, not 'r2'",
    ),
    "more parallel jobs than jobs": (["tuning.max_parallel_jobs=13"], "max_parallel_jobs (13) is above max_jobs (12)"),
    "an empty categorical list": (
        ["tuning.ranges.max_features.values=[]"],
        "tuning.ranges.max_features: a categorical range needs at least one value",
    ),
    "a grid larger than max_jobs": (
        [
            "tuning.strategy=grid",
            "tuning.max_jobs=5",
            "tuning.ranges={criterion: {type: categorical, values: [gini, entropy, log_loss]},"
            " max_features: {type: categorical, values: [sqrt, log2]}}",
        ],
        "the grid has 6 points, more than max_jobs (5) allows",
    ),
    "a grid over a continuous range": (["tuning.strategy=grid"], "grid search takes categorical ranges only"),
    "no validation split": (["data.validation_fraction=0"], "tuning needs a validation split"),
    "logarithmic scaling from zero": (["tuning.ranges.min_samples_leaf.min=0"], "logarithmic scaling needs min > 0"),
    "min above max": (["tuning.ranges.max_depth.min=20"], "min (20.0) is above max (16.0)"),
    "hyperband over an estimator that does not grow": (
        [
            "model.class=sklearn.linear_model.LogisticRegression",
            "model.hyperparameters={}",
            "tuning.strategy=hyperband",
            "tuning.ranges={C: {type: continuous, min: 0.01, max: 10}}",
        ],
        "tuning.strategy: hyperband stops trials on the objective reported as an ensemble grows",
    ),
    "an unknown strategy": (["tuning.strategy=genetic"], "tuning.strategy: Input should be"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_tuning_configs_are_refused_naming_the_field(case):
    overrides, message = BAD_CONFIGS[case]
    with pytest.raises(ConfigError) as raised:
        load_config(TUNED, overrides)
    assert message in str(raised.value)
    assert str(TUNED) in str(raised.value)


def test_every_tuning_field_takes_a_cli_override():
    config = load_config(TUNED, ["tuning.max_jobs=3", "tuning.objective.goal=minimize", "tuning.early_stopping=auto"])
    assert config.tuning is not None
    assert (config.tuning.max_jobs, config.tuning.objective.goal, config.tuning.early_stopping) == (
        3,
        "minimize",
        "auto",
    )
    assert load_config(TUNED).tuning.early_stopping == "off"  # YAML's bare `off` is false: read as "off"


# -- the AWS definition ------------------------------------------------------------------------------
def tune_step(definition: dict) -> dict:
    return next(s for s in definition["Steps"] if s["Name"] == "TuneModel")


@pytest.fixture(scope="module")
def aws() -> dict:
    return json.loads(definition_json(load_config(TUNED), Project()))


def test_the_tuning_job_config_is_the_yaml(aws):
    arguments = tune_step(aws)["Arguments"]
    assert arguments["HyperParameterTuningJobConfig"] == {
        "Strategy": "Bayesian",
        "HyperParameterTuningJobObjective": {"MetricName": "validation:auc", "Type": "Maximize"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 2},
        "RandomSeed": 7,
        "TrainingJobEarlyStoppingType": "Off",
        "ParameterRanges": {
            "IntegerParameterRanges": [
                {"Name": "n_estimators", "MinValue": "50", "MaxValue": "400", "ScalingType": "Auto"},
                {"Name": "max_depth", "MinValue": "2", "MaxValue": "16", "ScalingType": "Auto"},
            ],
            "ContinuousParameterRanges": [
                {"Name": "min_samples_leaf", "MinValue": "0.0001", "MaxValue": "0.05", "ScalingType": "Logarithmic"}
            ],
            "CategoricalParameterRanges": [{"Name": "max_features", "Values": ['"sqrt"', '"log2"']}],
        },
    }
    definition = arguments["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert not {"n_estimators", "max_depth", "max_features", "min_samples_leaf"} & set(static)  # tuned, not fixed
    assert static["model_class"] == '"sklearn.ensemble.RandomForestClassifier"' and "random_state" in static
    names = [m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]]
    assert names == [f"validation:{m}" for m in ("accuracy", "f1", "precision", "recall", "auc")]
    assert [c["ChannelName"] for c in definition["InputDataConfig"]] == ["train", "validation", "schema"]
    assert {p["Name"] for p in aws["Parameters"]}.isdisjoint({"HpNEstimators", "HpMaxDepth"})


def test_evaluate_and_register_use_the_best_training_jobs_model(aws):
    steps = {s["Name"]: s for s in aws["Steps"]}
    best = {"Get": "Steps.TuneModel.TrainingJobSummaries[0].TrainingJobName"}
    model = steps["EvaluateModel"]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    assert model == {
        "Std:Join": {
            "On": "/",
            "Values": [
                "s3:/",
                "sagegate-development-training",
                "models/breast-cancer-tuned",
                best,
                "output/model.tar.gz",
            ],
        }
    }
    gate = steps["CheckQualityGate"]["Arguments"]["IfSteps"]
    register = next(s for s in gate if s["Name"] == "RegisterMlflowModel")["Arguments"]
    arguments = register["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--training-job") + 1] == {
        "Get": "Steps.TuneModel.BestTrainingJob.TrainingJobName"
    }
    assert register["ProcessingInputs"][0]["S3Input"]["S3Uri"] == model


def test_the_definition_is_deterministic(aws):
    # the SDK names a TuningStep's code by a timestamp (sagemaker-python-sdk #3651): here, by its hash
    again = json.loads(definition_json(load_config(TUNED), Project()))
    assert again == aws
    static = tune_step(aws)["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]
    assert "/tune-" in static["sagemaker_submit_directory"]


def test_spot_and_checkpoints_carry_over_to_the_training_job_definition():
    # (that the local variant differs only in these: tests/test_definition.py, for both step kinds)
    spot = ["training.spot.enabled=true", "training.spot.max_wait_seconds=7200", "training.checkpoints=true"]
    remote = json.loads(definition_json(load_config(TUNED, spot), Project()))
    definition = tune_step(remote)["Arguments"]["TrainingJobDefinition"]
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert "checkpoints" in json.dumps(definition["CheckpointConfig"])


def test_hyperband_asks_the_job_for_staged_metrics():
    definition = json.loads(definition_json(load_config(TUNED, ["tuning.strategy=hyperband"]), Project()))
    arguments = tune_step(definition)["Arguments"]
    assert arguments["HyperParameterTuningJobConfig"]["Strategy"] == "Hyperband"
    assert arguments["TrainingJobDefinition"]["Environment"] == {"SAGEGATE_STAGED_METRICS": "1"}


def test_the_last_match_of_a_metric_counts(aws):
    job = LocalTuningJob("t", copy.deepcopy(tune_step(aws)["Arguments"]), client=None)
    text = (
        "metrics: validation:auc=0.91; validation:f1=0.8;\nnoise validation:auc=oops;\nmetrics: validation:auc=0.97;\n"
    )
    assert job.read_metrics(text) == {"validation:auc": 0.97, "validation:f1": 0.8}


# -- the same step, executed locally ----------------------------------------------------------------
@pytest.fixture(scope="module")
def state(tmp_path_factory) -> StateHome:
    return StateHome(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def runs(state) -> dict[str, RunRecord]:
    return {
        strategy: run_local(load_config(TUNED, [*QUICK, *overrides]), Project(), state)
        for strategy, overrides in STRATEGIES.items()
    }


def untuned_objective(state: StateHome, record: RunRecord) -> float:
    """The YAML's own hyperparameters, fitted on the run's train split, scored on its validation split."""
    folder = Path(state.root) / "untuned" / record.run_id
    with LocalS3(state) as s3:
        for part, name in (("train", "train.csv"), ("validation", "validation.csv"), ("schema", "schema.json")):
            s3.download(f"{record.artifacts['splits']}{part}/{name}", folder / name)
    sys.path[:0] = [str(container_code("train")), str(container_code("evaluate"))]
    try:
        import evaluate
        import train
    finally:
        del sys.path[:2]
    schema = json.loads((folder / "schema.json").read_text())
    rows = pd.read_csv(folder / "train.csv")
    config = load_config(TUNED)
    model = train.build_estimator(config.model.class_, dict(config.model.hyperparameters))
    model.fit(rows[schema["features"]], rows[schema["target"]])
    return evaluate.scores(model, pd.read_csv(folder / "validation.csv"), schema)[2]["values"]["auc"]


def most_at_once(trials: list[dict]) -> int:
    events = sorted(
        [(datetime.fromisoformat(t["started"]), 1) for t in trials]
        + [(datetime.fromisoformat(t["ended"]), -1) for t in trials]
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_tunes_for_real_and_beats_or_equals_the_untuned_model(state, runs, strategy):
    record = runs[strategy]
    assert record.status == "Succeeded", record.failure_reason
    tuning = record.tuning
    assert tuning is not None and tuning["strategy"] == strategy.capitalize()
    trials = tuning["trials"]
    assert [t["trial"] for t in trials] == list(range(1, 7))
    assert len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) > 1
    completed = [t for t in trials if t["status"] == "Completed"]
    best = max(completed, key=lambda t: t["objective"])
    assert tuning["best_training_job"] == best["training_job"]
    assert best["objective"] >= untuned_objective(state, record)
    # each trial's values came from its range, and reached the training job
    for trial in trials:
        values = trial["hyperparameters"]
        if strategy == "grid":
            assert values["max_depth"] in (3, 5, 8) and values["max_features"] in ("sqrt", "log2")
        else:
            trees = load_config(TUNED, [*QUICK, *STRATEGIES[strategy]]).tuning.ranges["n_estimators"]
            assert trees.min <= values["n_estimators"] <= trees.max and 2 <= values["max_depth"] <= 16
            assert 0.0001 <= values["min_samples_leaf"] <= 0.05 and values["max_features"] in ("sqrt", "log2")
    assert record.artifacts["model"].endswith(f"/{best['training_job']}/output/model.tar.gz")
    assert 1 < most_at_once(trials) <= 2  # observed from the trials' own start and end times
    if strategy == "grid":
        points = {(t["hyperparameters"]["max_depth"], t["hyperparameters"]["max_features"]) for t in trials}
        assert points == {(d, f) for d in (3, 5, 8) for f in ("sqrt", "log2")}


def test_hyperband_stops_losing_trials_early(runs):
    trials = runs["hyperband"].tuning["trials"]
    stopped = [t for t in trials if t["status"] == "Stopped"]
    assert stopped, "the Hyperband pruner stopped no trial"
    assert all(t["objective"] is not None for t in stopped)  # the last value each reported


def test_the_registered_version_names_its_trial_and_mlflow_has_the_trials(state, runs):
    client = mlflow.MlflowClient(tracking_uri=state.mlflow_tracking_uri)
    for record in runs.values():
        version = client.get_model_version(MODEL, record.registered_version)
        assert version.tags["sagemaker.training_job"] == record.tuning["best_training_job"]
        assert version.tags["sagemaker.tuning_job"] == record.tuning["job"]
        parent = client.get_run(record.tuning["mlflow_parent_run"])
        assert parent.data.tags["sagemaker.tuning_job"] == record.tuning["job"]
        assert parent.data.metrics["best_objective"] == pytest.approx(
            max(t["objective"] for t in record.tuning["trials"] if t["status"] == "Completed")
        )
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(c.data.tags["sagemaker.training_job"] for c in children) == sorted(
            t["training_job"] for t in record.tuning["trials"]
        )
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "tuning")] == [f"tuning/{record.run_id}.png"]


def test_tuning_show_prints_every_trial_and_writes_the_plot(state, runs, tmp_path):
    record = runs["random"]
    exe = os.path.join(os.path.dirname(sys.executable), "sagegate")
    env = {**os.environ, "SAGEGATE_HOME": str(state.root)}
    shown = subprocess.run(
        [exe, "tuning", "show", record.run_id, "--plot", str(tmp_path / "p.png")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "TRIAL" in lines[1] and "VALIDATION:AUC" in lines[1] and "N_ESTIMATORS" in lines[1]
    assert len(lines[2:8]) == 6 and all(line.split()[1] in ("Completed", "Stopped", "Failed") for line in lines[2:8])
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = subprocess.run([exe, "tuning", "show", record.run_id, "--json"], capture_output=True, text=True, env=env)
    assert json.loads(as_json.stdout)["trials"] == record.tuning["trials"]
    untuned = subprocess.run([exe, "tuning", "show", "nope"], capture_output=True, text=True, env=env)
    assert untuned.returncode == 1 and "no run 'nope'" in untuned.stderr


FAILING_GRID = ["tuning.strategy=grid", "tuning.max_jobs=2", "tuning.max_parallel_jobs=2"]


def test_a_failing_trial_is_recorded_and_the_tuning_job_goes_on(state):
    # scikit-learn refuses max_samples without bootstrap only at fit time: a bad sampled combination
    ranges = (
        "tuning.ranges={bootstrap: {type: categorical, values: [true, false]},"
        " max_samples: {type: categorical, values: [0.5]}}"
    )
    record = run_local(load_config(TUNED, [*FAILING_GRID, ranges]), Project(), state)
    assert record.status == "Succeeded", record.failure_reason
    statuses = {t["hyperparameters"]["bootstrap"]: t for t in record.tuning["trials"]}
    assert statuses[True]["status"] == "Completed"
    assert (
        statuses[False]["status"] == "Failed"
        and "`max_sample` cannot be set if `bootstrap=False`" in statuses[False]["failure_reason"]
    )


def test_a_tuning_job_whose_every_trial_fails_fails_the_run_with_the_first_reason(state):
    before = [v["version"] for v in list_versions(state)[0] if v["name"] == MODEL]
    ranges = (
        "tuning.ranges={bootstrap: {type: categorical, values: [false]},"
        " max_samples: {type: categorical, values: [0.5, 0.8]}}"
    )
    record = run_local(load_config(TUNED, [*FAILING_GRID, ranges]), Project(), state)
    assert record.status == "Failed" and record.registered_version is None
    assert "every trial of" in record.failure_reason and "`max_sample` cannot be set" in record.failure_reason
    assert [s.name for s in record.steps] == ["PreprocessData", "TuneModel"]
    assert [v["version"] for v in list_versions(state)[0] if v["name"] == MODEL] == before
