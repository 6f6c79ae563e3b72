"""One YAML file per model: load it, apply CLI overrides, validate it with precise errors.

Every error names the file, the dotted field path and the offending value, because the
people who read these messages are editing that file right now.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.containers import asset_folder
from pipelines.contract import DeploymentConfig, Threshold

SECRET_FIELDS = ("deployment.llm.hf_token_secret_arn", "deployment.llm.environment")
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "auc")
REGRESSION_METRICS = ("r2", "rmse", "mse", "mae")


class ConfigError(ValueError):
    """A model config that cannot be used; the message is meant for the user as is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Channel = Literal["train", "validation", "test"]


class DataConfig(_Strict):
    """One `source` split by the fractions, or `channels`: train/test (and validation) given apart."""

    source: str | None = Field(None, min_length=1)
    channels: dict[Channel, str] | None = None
    target: str = Field(min_length=1)
    features: list[str] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    random_state: int = 42

    @model_validator(mode="after")
    def _one_way_to_give_the_data(self) -> DataConfig:
        if (self.source is None) == (self.channels is None):
            raise ValueError("give either data.source (one file, split by the fractions) or data.channels, not both")
        if self.channels is not None and not {"train", "test"} <= set(self.channels):
            raise ValueError("data.channels needs train and test (validation is optional)")
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataConfig:
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise ValueError(
                "test_fraction + validation_fraction must leave at least 10% for training, "
                f"got {self.test_fraction} + {self.validation_fraction}"
            )
        return self


class ModelSpec(_Strict):
    class_: str = Field(alias="class", pattern=r"^sklearn\.[A-Za-z0-9_.]+\.[A-Za-z0-9_]+$")
    hyperparameters: dict[str, int | float | bool | str | None] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SpotTraining(_Strict):
    """Managed spot training on AWS: up to ~70-90% cheaper, interruptible; SageMaker waits up to
    `max_wait_seconds` in all (run time plus waits for capacity)."""

    enabled: bool = False
    max_wait_seconds: int | None = Field(None, ge=1, le=432000)


class TrainingConfig(_Strict):
    platform: Literal["local", "sagemaker"] = "local"
    deployment_target: Literal["local", "sagemaker_serverless", "sagemaker_realtime"] = "local"
    instance_type: str = Field("ml.m5.large", pattern=r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local)$")
    processing_instance_type: str = Field("ml.m5.large", pattern=r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local)$")
    max_runtime_seconds: int = Field(3600, ge=1, le=432000)  # SageMaker MaxRuntimeInSeconds limits
    spot: SpotTraining = SpotTraining()
    checkpoints: bool = False  # AWS: CheckpointConfig under s3://{bucket}/checkpoints/{model}/{execution}

    @model_validator(mode="after")
    def _spot_waits_at_least_the_run(self) -> TrainingConfig:
        wait = self.spot.max_wait_seconds
        if self.spot.enabled and wait is None:
            raise ValueError("spot.max_wait_seconds is required when spot.enabled (SageMaker's MaxWaitTimeInSeconds)")
        if self.spot.enabled and wait is not None and wait < self.max_runtime_seconds:
            raise ValueError(
                f"spot.max_wait_seconds ({wait}) must be >= max_runtime_seconds ({self.max_runtime_seconds}): "
                "SageMaker's MaxWaitTimeInSeconds covers the run and the waits for spot capacity"
            )
        return self


class ParameterRange(_Strict):
    """One tuned hyperparameter, as SageMaker's Integer/Continuous/CategoricalParameterRange."""

    type: Literal["integer", "continuous", "categorical"]
    min: float | None = None
    max: float | None = None
    values: list[int | float | bool | str] | None = None
    scaling: Literal["auto", "linear", "logarithmic", "reverse_logarithmic"] = "auto"

    @model_validator(mode="after")
    def _bounds_or_values(self) -> ParameterRange:
        if self.type == "categorical":
            if self.min is not None or self.max is not None:
                raise ValueError("a categorical range takes `values`, not min/max")
            if not self.values:
                raise ValueError("a categorical range needs at least one value in `values`")
            if len(set(map(repr, self.values))) != len(self.values):
                raise ValueError(f"values repeat: {self.values}")
            return self
        if self.values is not None:
            raise ValueError(f"an {self.type} range takes min and max, not `values`")
        if self.min is None or self.max is None:
            raise ValueError(f"an {self.type} range needs min and max")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if self.type == "integer" and (self.min != int(self.min) or self.max != int(self.max)):
            raise ValueError(f"an integer range needs whole min and max, got {self.min}..{self.max}")
        if self.scaling == "logarithmic" and self.min <= 0:
            raise ValueError(f"logarithmic scaling needs min > 0, got {self.min}")
        if self.scaling == "reverse_logarithmic" and (self.type != "continuous" or not 0 <= self.min < self.max < 1):
            raise ValueError("reverse_logarithmic scaling is for continuous ranges within [0, 1)")
        return self

    def ends(self) -> list[Any]:
        """The values scikit-learn's constraints are checked with: both ends, or every category."""
        if self.type == "categorical":
            return list(self.values or [])
        cast = int if self.type == "integer" else float
        return [cast(self.min), cast(self.max)]

    def points(self) -> int:
        return len(self.values or []) if self.type == "categorical" else 0


class TuningObjective(_Strict):
    metric: str
    goal: Literal["maximize", "minimize"]


class TuningConfig(_Strict):
    """A HyperparameterTuner over the training job (AWS: a TuningStep; locally the same step, run by
    pipelines.local.tuning). The objective is a metric the training job reports on the validation split."""

    objective: TuningObjective
    strategy: Literal["bayesian", "random", "grid", "hyperband"] = "bayesian"
    max_jobs: int = Field(ge=1, le=500)
    max_parallel_jobs: int = Field(1, ge=1, le=100)
    early_stopping: Literal["off", "auto"] = "off"
    random_seed: int | None = Field(None, ge=0)
    ranges: dict[str, ParameterRange] = Field(min_length=1)

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `off` as false."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _limits(self) -> TuningConfig:
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError(f"max_parallel_jobs ({self.max_parallel_jobs}) is above max_jobs ({self.max_jobs})")
        if self.strategy == "grid":
            continuous = [name for name, r in self.ranges.items() if r.type != "categorical"]
            if continuous:
                raise ValueError(
                    f"grid search takes categorical ranges only (SageMaker's rule): {', '.join(continuous)}"
                )
            points = 1
            for tuned in self.ranges.values():
                points *= tuned.points()
            if points > self.max_jobs:
                raise ValueError(f"the grid has {points} points, more than max_jobs ({self.max_jobs}) allows")
        if self.strategy == "hyperband" and self.early_stopping != "off":
            raise ValueError("hyperband stops trials itself: early_stopping must be off")
        return self


SCHEDULE_EXPRESSION = r"^(rate\([1-9][0-9]* (minute|minutes|hour|hours|day|days)\)|cron\([^()]+\))$"


class DataCaptureSettings(_Strict):
    enabled: bool = True
    sampling_percentage: int = Field(100, ge=0, le=100)


class MonitoringConfig(_Strict):
    """Data capture on the endpoint and the drift monitor that compares it with the training baseline
    (AWS: the monitoring pipeline on an EventBridge Scheduler schedule; locally `sagegate monitor run`)."""

    data_capture: DataCaptureSettings = DataCaptureSettings()
    schedule: str = Field("rate(1 hour)", pattern=SCHEDULE_EXPRESSION)
    window_minutes: int = Field(60, ge=1, le=7 * 24 * 60)  # how far back each run looks
    retrain_on_drift: bool = False

    @field_validator("schedule")
    @classmethod
    def _fires(cls, expression: str) -> str:
        """One the schedule runner can fire (and so EventBridge too): a cron with 99 minutes fails here,
        not at deploy time."""
        from datetime import UTC, datetime

        from pipelines.schedules import ScheduleError, next_fire

        now = datetime.now(UTC)
        try:
            next_fire(expression, now, now)
        except ScheduleError as error:
            raise ValueError(str(error)) from None
        return expression


class QualityGate(_Strict):
    metrics: dict[str, Threshold] = Field(min_length=1)


class ModelConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    task: Literal["classification", "regression"]
    data: DataConfig
    model: ModelSpec
    training: TrainingConfig = TrainingConfig()
    quality_gate: QualityGate
    deployment: DeploymentConfig = DeploymentConfig()
    tuning: TuningConfig | None = None
    monitoring: MonitoringConfig | None = None

    @field_validator("quality_gate")
    @classmethod
    def _known_metrics(cls, gate: QualityGate, info: Any) -> QualityGate:
        task = info.data.get("task")
        allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
        for metric in gate.metrics:
            if task and metric not in allowed:
                raise ValueError(f"unknown {task} metric {metric!r}; allowed: {', '.join(allowed)}")
        return gate

    @model_validator(mode="after")
    def _capture_on_realtime(self) -> ModelConfig:
        if self.captures() and self.deployment.type != "realtime":
            raise ValueError(
                "monitoring.data_capture: SageMaker serverless endpoints do not capture data (a serverless "
                "feature exclusion); use deployment.type: realtime or set data_capture.enabled: false"
            )
        return self

    def captures(self) -> bool:
        """Whether the endpoint captures traffic (and so whether there is anything to monitor)."""
        return self.monitoring is not None and self.monitoring.data_capture.enabled

    def data_inputs(self) -> dict[str, tuple[str, str]]:
        """The pipeline's data parameters: name → (where the data is: a local path or an s3:// URI,
        the key it is staged under in the training bucket when local)."""
        prefix = f"training-data/{self.name}"
        if self.data.channels:
            return {
                f"{channel.capitalize()}DataUri": (source, f"{prefix}/{channel}.csv")
                for channel, source in sorted(self.data.channels.items())
            }
        assert self.data.source is not None  # the validator allows one of the two
        return {"InputDataUri": (self.data.source, f"{prefix}/data.csv")}


def check_estimator(config: ModelConfig, path: str | Path) -> None:
    """What takes scikit-learn to check: the class exists and suits the task, and it takes the
    hyperparameters and tuning ranges; a ConfigError names the file. Apart from `read_config` because
    importing scikit-learn costs ~0.7 s, which `sagegate run` leaves to its job server."""
    try:
        estimator = load_estimator_class(config.model.class_)
        kind = getattr(estimator, "_estimator_type", None)
        if kind is None:  # sklearn >= 1.6 moved it to tags
            kind = estimator().__sklearn_tags__().estimator_type
        expected = "classifier" if config.task == "classification" else "regressor"
        if kind != expected:
            raise ValueError(f"model.class {config.model.class_} is a {kind}, task {config.task} needs a {expected}")
        check_hyperparameters(estimator, config.model.hyperparameters)
        if config.tuning is not None:
            check_tuning(estimator, config)
    except ValueError as error:
        raise ConfigError(f"{path}: invalid model config:\n  (top level): {error}") from None


def load_estimator_class(dotted: str) -> type:
    module_name, _, class_name = dotted.rpartition(".")
    try:
        estimator = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"unknown model class {dotted!r}") from None
    if not hasattr(estimator, "fit") or not hasattr(estimator, "get_params"):
        raise ValueError(f"model class {dotted!r} is not a scikit-learn estimator")
    return estimator


def check_hyperparameters(estimator: type, hyperparameters: dict[str, Any]) -> None:
    """Reject names the estimator lacks and values sklearn's own constraints refuse."""
    instance = estimator()
    known = instance.get_params()
    for key in hyperparameters:
        if key not in known:
            raise ValueError(
                f"model.hyperparameters.{key}: {estimator.__name__} has no such parameter "
                f"(known: {', '.join(sorted(known))})"
            )
    try:
        instance.set_params(**hyperparameters)
        validate = getattr(instance, "_validate_params", None)
        if validate:
            validate()
    except (ValueError, TypeError) as error:
        raise ValueError(f"model.hyperparameters: {error}") from None


def check_tuning(estimator: type, config: ModelConfig) -> None:
    """What the estimator and the data must allow for the tuning block: known parameters, each range's
    ends accepted by scikit-learn's own constraints, a metric the task reports, a validation split."""
    assert config.tuning is not None
    metrics = CLASSIFICATION_METRICS if config.task == "classification" else REGRESSION_METRICS
    if config.tuning.objective.metric not in metrics:
        raise ValueError(
            f"tuning.objective.metric: {config.task} training reports {', '.join(metrics)}, "
            f"not {config.tuning.objective.metric!r}"
        )
    data = config.data
    if (data.channels is not None and "validation" not in data.channels) or (
        data.channels is None and data.validation_fraction == 0
    ):
        raise ValueError("tuning needs a validation split (data.validation_fraction > 0 or data.channels.validation)")
    known = estimator().get_params()
    if config.tuning.strategy == "hyperband" and not {"n_estimators", "warm_start"} <= set(known):
        raise ValueError(
            f"tuning.strategy: hyperband stops trials on the objective reported as an ensemble grows; "
            f"{estimator.__name__} has no n_estimators/warm_start to grow (use bayesian, random or grid)"
        )
    for name, tuned in config.tuning.ranges.items():
        if name not in known:
            raise ValueError(f"tuning.ranges.{name}: {estimator.__name__} has no such parameter")
        for value in tuned.ends():
            try:
                check_hyperparameters(estimator, {**config.model.hyperparameters, name: value})
            except ValueError as error:
                reason = str(error).removeprefix("model.hyperparameters: ")
                raise ValueError(f"tuning.ranges.{name}: {value!r} is refused: {reason}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value parsed as YAML, so 8 is an int and null is None)."""
    path, sep, raw = text.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {text!r}: expected FIELD.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path.strip().split("."), value


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = document
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {key} is not a mapping")
            node = child
        node[keys[-1]] = value
    return document


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    path = path.replace("class_", "class")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown field"
    if error["type"] == "missing":
        return f"{path}: required field is missing"
    if path in SECRET_FIELDS or not error["loc"]:  # a credential, or the whole document: never repeat it
        return f"{path}: {message}"
    return f"{path}: {message} (got {error.get('input')!r})"


def load_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """The model config at `path` with `overrides` applied, validated whole; a ConfigError names the
    file and the field."""
    config = read_config(path, overrides)
    check_estimator(config, path)
    return config


def read_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """`load_config` without `check_estimator`: the document's own validation, no scikit-learn."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: model config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read model config: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(document).__name__}")
    document = apply_overrides(document, overrides or [])
    try:
        config = ModelConfig.model_validate(document)
    except ValidationError as error:
        details = "\n  ".join(_describe(e) for e in error.errors())
        raise ConfigError(f"{path}: invalid model config:\n  {details}") from None
    return _resolve_source(config, path)


def _resolve_source(config: ModelConfig, path: Path) -> ModelConfig:
    """Local data paths are relative to the project (the folder above `models/`)."""
    base = path.resolve().parent.parent if path.resolve().parent.name == "models" else Path.cwd()

    def resolved(source: str) -> str:
        return source if source.startswith("s3://") or Path(source).is_absolute() else str((base / source).resolve())

    data = config.data
    if data.source is not None:
        data = data.model_copy(update={"source": resolved(data.source)})
    if data.channels is not None:
        data = data.model_copy(update={"channels": {c: resolved(s) for c, s in data.channels.items()}})
    return config.model_copy(update={"data": data})


def find_model_config(model: str, overrides: list[str] | None = None) -> ModelConfig:
    """The config whose `name` is `model`: from the project's `./models`, then the bundled examples."""
    return load_config(find_model_config_path(model, overrides), overrides)


def find_model_config_path(model: str, overrides: list[str] | None = None) -> Path:
    """Where the YAML whose `name` is `model` is: the project's `./models`, then the bundled examples."""
    for path, config in discovered_configs(overrides):
        if config.name == model:
            return path
    searched = " or ".join(str(folder) for folder in model_config_folders())
    raise ConfigError(f"--model {model}: no model YAML named {model!r} in {searched} (or pass --config PATH)")


def model_config_folders() -> list[Path]:
    """The project's `./models`, then the bundled examples (once, when the project's folder is the bundled one)."""
    return list(dict.fromkeys([Path("models").resolve(), asset_folder("models")]))


def discovered_configs(overrides: list[str] | None = None) -> Iterator[tuple[Path, ModelConfig]]:
    """Every valid model YAML of `model_config_folders`, in order, with its path (invalid ones skipped:
    a command that names a file gets its error from `load_config` instead)."""
    for folder in model_config_folders():
        for path in sorted(folder.glob("*.y*ml")):
            try:
                config = load_config(path, overrides)
            except ConfigError:
                continue
            yield path, config


INVALID_CONFIG_EXIT = 2  # `python -m pipelines.config`'s exit code for an invalid config (any other: it broke)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.config FILE [FIELD.PATH=VALUE ...]`: exit 0 when the config is valid, else
    INVALID_CONFIG_EXIT and why (what `sagegate run` asks its job server, which has scikit-learn imported already)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.config", description="check a model config")
    parser.add_argument("file", help="the model YAML")
    parser.add_argument("overrides", nargs="*", default=[], metavar="FIELD.PATH=VALUE", help="as `sagegate run --set`")
    args = parser.parse_args(argv)
    try:
        load_config(args.file, args.overrides)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return INVALID_CONFIG_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
