"""The SageMaker pipeline: preprocess → train → evaluate → quality gate → register | fail.

One builder serves AWS and local mode. The only difference is the SageMaker Model Registry
step (`ModelStep(model.register())`), which the SDK's local executor refuses: local runs
leave it out and rely on the MLflow register job, which runs in both modes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sagemaker.inputs import TrainingInput
from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.session import Session
from sagemaker.sklearn.estimator import SKLearn
from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner, IntegerParameter
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo, ConditionLessThanOrEqualTo
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import (
    Parameter,
    ParameterBoolean,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep, TuningStep
from sagemaker.workflow.utilities import get_training_code_hash

from pipelines.config import CLASSIFICATION_METRICS, REGRESSION_METRICS, ModelConfig
from pipelines.containers import container_code
from pipelines.environ import SavedEnvironment
from pipelines.runtime_image import runtime_image_uri, script_processor
from pipelines.staging import input_uris
from pipelines.state import Project

REGISTER_STEP = "RegisterModelPackage"
TRAIN_STEP, TUNE_STEP = "TrainModel", "TuneModel"
MLFLOW_STEP = "RegisterMlflowModel"  # the register job: the last job of a local run
PROCESSING_ROOT = "/opt/ml/processing"
# the line containers/train/train.py prints per metric on the validation split (the last match counts)
METRIC_REGEX = r"validation:{metric}=([-+0-9.eE]+|nan|inf);"
STAGED_METRICS = "SAGEGATE_STAGED_METRICS"  # train.py: report after each tenth of a growing ensemble
SCALING = {
    "auto": "Auto",
    "linear": "Linear",
    "logarithmic": "Logarithmic",
    "reverse_logarithmic": "ReverseLogarithmic",
}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def _hyperparameter_parameter(name: str, value: Any) -> Parameter | str:
    """Typed pipeline parameter per hyperparameter; null stays a fixed value (no null parameters)."""
    parameter_name = f"Hp{_camel(name)}"
    if isinstance(value, bool):
        return ParameterBoolean(parameter_name, default_value=value)
    if isinstance(value, int):
        return ParameterInteger(parameter_name, default_value=value)
    if isinstance(value, float):
        return ParameterFloat(parameter_name, default_value=value)
    if isinstance(value, str):
        return ParameterString(parameter_name, default_value=value)
    return json.dumps(value)


def threshold_parameter_name(metric: str, bound: str) -> str:
    return f"{_camel(metric)}{bound.capitalize()}"


def _s3(project: Project, *parts: Any) -> Join:
    return Join(on="/", values=["s3:/", project.bucket, *parts])


def _input_folder(parameter: str) -> str:
    """`InputDataUri` → `data` (one source, split by the job); `TrainDataUri` → `train` (a channel)."""
    return "data" if parameter == "InputDataUri" else parameter.removesuffix("DataUri").lower()


def _spot_and_checkpoints(config: ModelConfig, project: Project, execution: Any) -> dict[str, Any]:
    """AWS only (the SDK's local mode refuses both): managed spot training and checkpoints, one
    checkpoint prefix per execution so a new run never resumes an old run's state."""
    training = config.training
    arguments: dict[str, Any] = {}
    if training.spot.enabled:
        arguments.update(use_spot_instances=True, max_wait=training.spot.max_wait_seconds)
    if training.checkpoints:
        arguments["checkpoint_s3_uri"] = _s3(project, "checkpoints", config.name, execution)
    return arguments


def build_pipeline(config: ModelConfig, project: Project, session: Session, *, local: bool) -> Pipeline:
    name = config.name
    execution = ExecutionVariables.PIPELINE_EXECUTION_ID
    role = project.training_role_arn

    data_parameters = {
        name: ParameterString(name, default_value=uri) for name, uri in input_uris(config, project).items()
    }
    processing_instance = ParameterString(
        "ProcessingInstanceType", default_value=config.training.processing_instance_type
    )
    training_instance = ParameterString("TrainingInstanceType", default_value=config.training.instance_type)
    tracking_uri = ParameterString("MlflowTrackingUri", default_value=project.mlflow_tracking_server_arn)
    # a new experiment's artifact location; empty: the tracking server's default (local runs: the state folder)
    artifact_location = ParameterString("MlflowArtifactLocation", default_value="")
    image = runtime_image_uri(project)
    approval = ParameterString("ModelApprovalStatus", default_value="PendingManualApproval")
    tuned = set(config.tuning.ranges) if config.tuning else set()
    hyperparameters = {
        k: _hyperparameter_parameter(k, v) for k, v in config.model.hyperparameters.items() if k not in tuned
    }
    thresholds = {
        (metric, bound): ParameterFloat(threshold_parameter_name(metric, bound), default_value=value)
        for metric, threshold in config.quality_gate.metrics.items()
        for bound, value in (("min", threshold.min), ("max", threshold.max))
        if value is not None
    }

    processor = script_processor(project, session, name, "preprocess", processing_instance)
    # baseline: Model Monitor's statistics.json and constraints.json of the training split
    split_outputs = ["train", "validation", "test", "schema", "baseline"]
    step_preprocess = ProcessingStep(
        name="PreprocessData",
        step_args=processor.run(
            code=str(container_code("preprocess", "preprocess.py")),
            inputs=[
                ProcessingInput(source=parameter, destination=f"{PROCESSING_ROOT}/input/{_input_folder(name)}")
                for name, parameter in data_parameters.items()
            ],
            outputs=[
                ProcessingOutput(
                    output_name=part,
                    source=f"{PROCESSING_ROOT}/output/{part}",
                    destination=_s3(project, "training-data", name, execution, part),
                )
                for part in split_outputs
            ],
            arguments=[
                "--input-dir",
                f"{PROCESSING_ROOT}/input" if config.data.channels else f"{PROCESSING_ROOT}/input/data",
                *(["--channels", ",".join(sorted(config.data.channels))] if config.data.channels else []),
                "--output-dir",
                f"{PROCESSING_ROOT}/output",
                "--target",
                config.data.target,
                "--task",
                config.task,
                "--test-fraction",
                str(config.data.test_fraction),
                "--validation-fraction",
                str(config.data.validation_fraction),
                "--random-state",
                str(config.data.random_state),
                *(["--features", ",".join(config.data.features)] if config.data.features else []),
            ],
        ),
    )

    def split_uri(part: str) -> Any:
        return step_preprocess.properties.ProcessingOutputConfig.Outputs[part].S3Output.S3Uri

    estimator = SKLearn(
        entry_point="train.py",
        source_dir=str(container_code("train")),
        image_uri=image,
        role=role,
        instance_type=training_instance,
        instance_count=1,
        max_run=config.training.max_runtime_seconds,
        output_path=f"s3://{project.bucket}/models/{name}",
        code_location=f"s3://{project.bucket}/training-code/{name}",
        base_job_name=project.job_name_prefix(name, "train"),
        hyperparameters={"model_class": config.model.class_, **hyperparameters},
        # train.py reports validation metrics with the evaluate job's own definitions
        dependencies=[str(container_code("evaluate", "evaluate.py"))],
        environment={STAGED_METRICS: "1"} if config.tuning and config.tuning.strategy == "hyperband" else None,
        metric_definitions=metric_definitions(config),
        sagemaker_session=session,
        disable_profiler=True,
        **({} if local else _spot_and_checkpoints(config, project, execution)),
    )
    channels = {
        "train": TrainingInput(split_uri("train"), content_type="text/csv"),
        "validation": TrainingInput(split_uri("validation"), content_type="text/csv"),
        "schema": TrainingInput(split_uri("schema"), content_type="application/json"),
    }
    step_train: TrainingStep | TuningStep
    if config.tuning is None:
        step_train = TrainingStep(name=TRAIN_STEP, step_args=estimator.fit(channels))
        model_data = step_train.properties.ModelArtifacts.S3ModelArtifacts
    else:  # the best training job's model (top_k=0), where its tuning job's jobs write theirs
        # named by the code's hash: the SDK content-addresses a TrainingStep's code but not a TuningStep's
        code_hash = get_training_code_hash(estimator.entry_point, estimator.source_dir, estimator.dependencies)
        step_args = tuner(config, project, estimator).fit(channels, job_name=f"tune-{code_hash[:16]}")
        step_train = TuningStep(name=TUNE_STEP, step_args=step_args)
        model_data = step_train.get_top_model_s3_uri(top_k=0, s3_bucket=project.bucket, prefix=f"models/{name}")

    evaluation_report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluator = script_processor(project, session, name, "evaluate", processing_instance)
    step_evaluate = ProcessingStep(
        name="EvaluateModel",
        step_args=evaluator.run(
            code=str(container_code("evaluate", "evaluate.py")),
            inputs=[
                ProcessingInput(source=model_data, destination=f"{PROCESSING_ROOT}/model"),
                ProcessingInput(source=split_uri("test"), destination=f"{PROCESSING_ROOT}/test"),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="evaluation",
                    source=f"{PROCESSING_ROOT}/evaluation",
                    destination=_s3(project, "evaluation", name, execution),
                )
            ],
            arguments=[
                "--model-dir",
                f"{PROCESSING_ROOT}/model",
                "--test-dir",
                f"{PROCESSING_ROOT}/test",
                "--output-dir",
                f"{PROCESSING_ROOT}/evaluation",
            ],
        ),
        property_files=[evaluation_report],
    )
    evaluation_uri = step_evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri

    def metric(metric_name: str) -> JsonGet:
        return JsonGet(
            step_name=step_evaluate.name, property_file=evaluation_report, json_path=f"metrics.{metric_name}.value"
        )

    conditions = [
        (ConditionGreaterThanOrEqualTo if bound == "min" else ConditionLessThanOrEqualTo)(left=metric(m), right=p)
        for (m, bound), p in thresholds.items()
    ]
    failure_parts: list[Any] = [f"Quality gate failed for {name}:"]
    for (m, bound), p in thresholds.items():
        failure_parts += [f" {m}=", metric(m), f" (needs {'>=' if bound == 'min' else '<='} ", p, ");"]
    step_fail = FailStep(name="QualityGateFailed", error_message=Join(on="", values=failure_parts))

    # what endpoints serve: the register job's archive (model.onnx when its conversion verified)
    served_model = _s3(project, "models", name, "served", execution, "model.tar.gz")
    registrar = script_processor(project, session, name, "register", processing_instance)
    registration = PropertyFile(name="Registration", output_name="registration", path="registration.json")
    step_register_mlflow = ProcessingStep(
        name=MLFLOW_STEP,
        step_args=registrar.run(
            code=str(container_code("register", "register.py")),
            inputs=[
                ProcessingInput(source=model_data, destination=f"{PROCESSING_ROOT}/model"),
                ProcessingInput(source=evaluation_uri, destination=f"{PROCESSING_ROOT}/evaluation"),
                ProcessingInput(source=split_uri("schema"), destination=f"{PROCESSING_ROOT}/schema"),
                ProcessingInput(source=split_uri("test"), destination=f"{PROCESSING_ROOT}/test"),
                ProcessingInput(source=split_uri("baseline"), destination=f"{PROCESSING_ROOT}/baseline"),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="registration",
                    source=f"{PROCESSING_ROOT}/registration",
                    destination=_s3(project, "models", name, "registrations", execution),
                )
            ],
            arguments=[
                "--model-dir",
                f"{PROCESSING_ROOT}/model",
                "--evaluation-dir",
                f"{PROCESSING_ROOT}/evaluation",
                "--schema-dir",
                f"{PROCESSING_ROOT}/schema",
                "--test-dir",
                f"{PROCESSING_ROOT}/test",
                "--baseline-dir",
                f"{PROCESSING_ROOT}/baseline",
                "--baseline-uri",
                split_uri("baseline"),
                "--output-dir",
                f"{PROCESSING_ROOT}/registration",
                "--tracking-uri",
                tracking_uri,
                "--experiment",
                project.registered_model(config.name),
                "--artifact-location",
                artifact_location,
                "--registered-model-name",
                project.registered_model(config.name),
                "--execution-id",
                execution,
                "--served-model-uri",
                served_model,
                *(
                    [
                        "--tuning-job",
                        step_train.properties.HyperParameterTuningJobName,
                        "--training-job",
                        step_train.properties.BestTrainingJob.TrainingJobName,
                    ]
                    if isinstance(step_train, TuningStep)
                    else []
                ),
            ],
        ),
        property_files=[registration],
    )
    if_steps: list[Any] = [step_register_mlflow]
    if not local:
        # the package carries its MLflow version: the gate (triggered by the package) checks that one
        mlflow_version = JsonGet(step_name=step_register_mlflow.name, property_file=registration, json_path="version")
        registry = _model_registry_step(
            config, project, session, image, served_model, evaluation_uri, approval, mlflow_version
        )
        if_steps.append(registry)

    step_gate = ConditionStep(
        name="CheckQualityGate",
        conditions=conditions,
        if_steps=if_steps,
        else_steps=[step_fail],
    )
    return Pipeline(
        name=project.pipeline_name(name),
        parameters=[
            *data_parameters.values(),
            processing_instance,
            training_instance,
            tracking_uri,
            artifact_location,
            approval,
            *[p for p in hyperparameters.values() if isinstance(p, Parameter)],
            *thresholds.values(),
        ],
        steps=[step_preprocess, step_train, step_evaluate, step_gate],
        sagemaker_session=session,
    )


def metric_definitions(config: ModelConfig) -> list[dict[str, str]]:
    """Every metric the task reports on the validation split, as `validation:{name}`."""
    metrics = CLASSIFICATION_METRICS if config.task == "classification" else REGRESSION_METRICS
    return [{"Name": f"validation:{m}", "Regex": METRIC_REGEX.format(metric=m)} for m in metrics]


def tuner(config: ModelConfig, project: Project, estimator: SKLearn) -> HyperparameterTuner:
    """The `tuning` block as SageMaker's HyperparameterTuner over the training estimator."""
    tuning = config.tuning
    assert tuning is not None
    ranges: dict[str, Any] = {}
    for name, tuned in tuning.ranges.items():
        if tuned.type == "categorical":
            ranges[name] = CategoricalParameter(list(tuned.values or []))
        elif tuned.type == "integer":
            ranges[name] = IntegerParameter(int(tuned.min or 0), int(tuned.max or 0), SCALING[tuned.scaling])
        else:
            ranges[name] = ContinuousParameter(tuned.min, tuned.max, SCALING[tuned.scaling])
    return HyperparameterTuner(
        estimator,
        objective_metric_name=f"validation:{tuning.objective.metric}",
        hyperparameter_ranges=ranges,
        metric_definitions=metric_definitions(config),
        strategy=tuning.strategy.capitalize(),
        objective_type=tuning.objective.goal.capitalize(),
        max_jobs=tuning.max_jobs,
        max_parallel_jobs=tuning.max_parallel_jobs,
        early_stopping_type=tuning.early_stopping.capitalize(),
        random_seed=tuning.random_seed,
        base_tuning_job_name=project.job_name_prefix(config.name, "tune")[:32],
    )


def _model_registry_step(
    config: ModelConfig,
    project: Project,
    session: Session,
    image: Any,
    model_data: Any,
    evaluation_uri: Any,
    approval: Any,
    mlflow_version: Any,
) -> ModelStep:
    """The Model Registry version: the register job's served archive on the runtime image, whose entry
    point serves it (`serve`: containers/inference baked in), so no repack step rewrites the artifact."""
    model = Model(
        image_uri=image,
        name=project.registered_model(config.name),
        model_data=model_data,
        role=project.inference_role_arn,
        sagemaker_session=session,
    )
    metrics = ModelMetrics(
        model_statistics=MetricsSource(
            s3_uri=Join(on="/", values=[evaluation_uri, "evaluation.json"]), content_type="application/json"
        )
    )
    return ModelStep(
        name=REGISTER_STEP,
        step_args=model.register(
            content_types=["text/csv", "application/json"],
            response_types=["application/json", "text/csv"],
            inference_instances=[config.deployment.instance_type],
            transform_instances=[config.deployment.instance_type],
            model_package_group_name=project.model_package_group(config.name),
            approval_status=approval,
            model_metrics=metrics,
            customer_metadata_properties={
                "mlflow_registered_model": project.registered_model(config.name),
                "mlflow_version": mlflow_version,
            },
        ),
    )


PipelineKind = Literal["training", "inference", "monitoring"]


@dataclass(frozen=True)
class ExportedDefinition:
    """A definition as `upsert` would send it, and the step code it references: the objects the SDK
    uploaded while building it (content-addressed keys under `training-code/{model}/`), which must be
    in the bucket before an execution starts."""

    json: str
    code: dict[str, bytes]


@contextmanager
def _offline() -> Iterator[None]:
    """In-process moto, with any AWS_ENDPOINT_URL* set aside: moto intercepts only AWS's own hosts, so
    a client pointed elsewhere (a moto server, LocalStack) would receive the SDK's uploads for real."""
    from moto import mock_aws

    saved = SavedEnvironment()
    saved.unset([key for key in os.environ if key.startswith("AWS_ENDPOINT_URL")])
    try:
        with mock_aws():
            yield
    finally:
        saved.restore()


def export_definition(
    config: ModelConfig, project: Project, *, local: bool = False, kind: PipelineKind = "training"
) -> ExportedDefinition:
    """Build offline: the SDK's code uploads go to an in-process moto S3 and are returned. `kind`: the
    training pipeline, the daily batch-inference pipeline or the drift-monitoring pipeline."""
    from pipelines.sessions import aws_session, code_prefix, local_session

    with _offline():
        if local:
            import tempfile

            session: Session = local_session(project, config.name, Path(tempfile.mkdtemp()))
        else:
            session = aws_session(project, config.name)
        s3 = session.boto_session.client("s3")
        location = {} if project.region == "us-east-1" else {"LocationConstraint": project.region}
        s3.create_bucket(Bucket=project.bucket, **({"CreateBucketConfiguration": location} if location else {}))
        if kind == "inference":
            from pipelines.batch_definition import build_inference_pipeline

            pipeline = build_inference_pipeline(config, project, session)
        elif kind == "monitoring":
            from pipelines.monitoring_definition import build_monitoring_pipeline

            pipeline = build_monitoring_pipeline(config, project, session)
        else:
            pipeline = build_pipeline(config, project, session, local=local)
        text = json.dumps(json.loads(pipeline.definition()), indent=2, sort_keys=True)
        listed = s3.list_objects_v2(Bucket=project.bucket, Prefix=code_prefix(config.name) + "/")
        code = {
            item["Key"]: s3.get_object(Bucket=project.bucket, Key=item["Key"])["Body"].read()
            for item in listed.get("Contents", [])
        }
    return ExportedDefinition(text, code)


def definition_json(
    config: ModelConfig, project: Project, *, local: bool = False, kind: PipelineKind = "training"
) -> str:
    """The JSON `upsert` would send, built offline (no credentials, no network)."""
    return export_definition(config, project, local=local, kind=kind).json
