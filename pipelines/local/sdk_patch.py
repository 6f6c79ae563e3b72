"""The one place where sagegate patches sagemaker SDK internals.

`LocalPipelineSession` runs each job through `sagemaker.local.image._SageMakerContainer`,
which writes a docker-compose file and hands it to `docker compose up`. We keep everything
the SDK does (input download, config files, volume layout, artifact upload) and replace
only the command it launches: `_compose()` returns a call to `pipelines.local.container`,
which runs the job as a subprocess from that same compose file. The executor's step factory also
gets TuningStep (which it refuses): `pipelines.local.tuning` runs it, and the step's list-steps
metadata names the tuning job as on AWS. Also patched: the compose
binary lookup (there is no Docker), the ECR login (no registry), and the credential probe; and
the SDK-defaults validation, which the SDK repeats against its JSON schema on every config
lookup (hundreds per run): each distinct config is validated once.

The patched names are private, so the SDK is pinned exactly; `tests/test_sdk_patch.py`
fails if an upgrade moves or reshapes any of them.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any

import sagemaker
import sagemaker.utils
from sagemaker.local import entities, image, local_session
from sagemaker.local import pipeline as local_pipeline
from sagemaker.utils import unique_name_from_base
from sagemaker.workflow.steps import StepTypeEnum

from pipelines.local.container import MAX_RUNTIME_VARIABLE
from pipelines.local.pins import PINNED, require
from pipelines.local.tuning import LocalTuningJob

RUNNER_MODULE = "pipelines.local.container"
GRAPH_MESSAGE = "Pipeline graph %s"  # logged on the SDK's executor logger as an execution starts

# (module, name) -> parameters the SDK calls it with (checked at install time)
_EXPECTED_SIGNATURES = {
    (image, "_SageMakerContainer._compose"): ["self", "detached"],
    (image, "_SageMakerContainer._get_compose_cmd_prefix"): [],
    (image, "_ecr_login_if_needed"): ["boto_session", "image"],
    (image, "_aws_credentials"): ["session"],
    (sagemaker.utils, "validate_sagemaker_config"): ["sagemaker_config"],
    (local_pipeline, "_StepExecutorFactory.get"): ["self", "step"],
    (entities, "_LocalPipelineExecution._initialize_step_execution"): ["self", "steps"],
    (local_pipeline, "_StepExecutor.__init__"): ["self", "pipeline_executor", "step"],
    (entities, "_LocalPipelineExecutionStep.__init__"): [
        "self",
        "name",
        "step_type",
        "description",
        "display_name",
        "start_time",
        "end_time",
        "status",
        "properties",
        "failure_reason",
    ],
    (local_session, "LocalSagemakerClient.create_training_job"): [
        "self",
        "TrainingJobName",
        "AlgorithmSpecification",
        "OutputDataConfig",
        "ResourceConfig",
        "InputDataConfig",
        "Environment",
        "kwargs",
    ],
}
_original_create_training_job = local_session.LocalSagemakerClient.create_training_job
_original_validate = sagemaker.utils.validate_sagemaker_config
_original_executor_for = local_pipeline._StepExecutorFactory.get
_original_step_init = entities._LocalPipelineExecutionStep.__init__
_original_initialize = entities._LocalPipelineExecution._initialize_step_execution
_validated: set[str] = set()


class SdkPatchError(RuntimeError):
    """The installed sagemaker SDK no longer has the internals the local runner replaces."""


def _target(module: Any, dotted: str) -> Any:
    owner: Any = module
    for part in dotted.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            raise SdkPatchError(f"sagemaker {sagemaker.__version__}: {module.__name__}.{dotted} is gone")
    return owner


def check_sdk() -> None:
    require("sagemaker")
    for (module, dotted), expected in _EXPECTED_SIGNATURES.items():
        found = list(inspect.signature(_target(module, dotted)).parameters)
        if found != expected:
            raise SdkPatchError(
                f"sagemaker {sagemaker.__version__}: {module.__name__}.{dotted} takes {found}, "
                f"the local runner was written for {expected} (pinned {PINNED['sagemaker']})"
            )
    if not hasattr(image, "DOCKER_COMPOSE_FILENAME"):
        raise SdkPatchError("sagemaker.local.image.DOCKER_COMPOSE_FILENAME is gone")


def _compose(self: Any, detached: bool = False) -> list[str]:
    if detached:
        raise NotImplementedError("local endpoints are served by sagegate's endpoint manager, not the SDK")
    return [sys.executable, "-m", RUNNER_MODULE, os.path.join(self.container_root, image.DOCKER_COMPOSE_FILENAME)]


def _no_compose_binary() -> list[str]:
    return []


def _no_ecr_login(boto_session: Any, image: str) -> bool:
    return False


def _credentials_from_environment(session: Any) -> None:
    """Jobs inherit the parent's environment (local S3 endpoint and its test credentials)."""
    return None


def _create_training_job(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The local client ignores StoppingCondition ("not supported in local mode"); pass the limit to the
    runner, which enforces it as SageMaker does (the job is stopped, MaxRuntimeExceeded)."""
    call = inspect.signature(_original_create_training_job).bind(self, *args, **kwargs)
    limit = (call.arguments.get("kwargs", {}).get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    if limit:
        call.arguments["Environment"] = {
            **(call.arguments.get("Environment") or {}),
            MAX_RUNTIME_VARIABLE: str(int(limit)),
        }
    return _original_create_training_job(*call.args, **call.kwargs)


def _validate_once(sagemaker_config: dict | None = None) -> None:
    """`get_sagemaker_config_value` re-validates the session's unchanging config against the SDK's JSON
    schema (meta-schema check included) on every lookup: ~60% of a local run's main-process time."""
    key = json.dumps(sagemaker_config, sort_keys=True, default=str)
    if key not in _validated:
        _original_validate(sagemaker_config)  # raises on an invalid config, as before
        _validated.add(key)


class _TuningStepExecutor(local_pipeline._StepExecutor):
    """CreateHyperParameterTuningJob with the step's evaluated arguments, run by LocalTuningJob."""

    def execute(self) -> dict[str, Any]:
        executor = self.pipline_executor  # sic: the SDK's spelling
        arguments = executor.evaluate_step_arguments(self.step)
        name = arguments.pop("HyperParameterTuningJobName", None) or unique_name_from_base(self.step.name)
        region = executor.sagemaker_session.boto_region_name
        try:
            return LocalTuningJob(name, arguments, executor.local_sagemaker_client, region).run()
        except Exception as error:  # the step fails with the reason, as the SDK's executors do
            executor.execution.update_step_failure(self.step.name, f"{type(error).__name__}: {error}")
            raise  # unreachable: update_step_failure raises StepExecutionException


def _executor_for(self: Any, step: Any) -> Any:
    if step.step_type == StepTypeEnum.TUNING:
        return _TuningStepExecutor(self.pipeline_executor, step)
    return _original_executor_for(self, step)


def _step_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_step_init(self, *args, **kwargs)
    self._step_type_to_output_format_map[StepTypeEnum.TUNING] = lambda: {
        "TuningJob": {"Arn": self.properties["HyperParameterTuningJobArn"]}
    }


def _initialize_step_execution(self: Any, steps: Any) -> None:
    """The SDK's check refuses any step type outside its list: tuning steps are registered here. The
    execution's step graph (the SDK's own, from the definition) is logged for whoever records the run."""
    tuning = [step for step in steps if getattr(step, "step_type", None) == StepTypeEnum.TUNING]
    _original_initialize(self, [step for step in steps if step not in tuning])
    for step in tuning:
        self.step_execution[step.name] = entities._LocalPipelineExecutionStep(
            step.name, step.step_type, step.description, step.display_name
        )
    graph = self.pipeline_dag
    steps_and_edges = {
        "steps": [{"name": name, "type": step.step_type.value} for name, step in graph.step_map.items()],
        "edges": sorted([source, target] for source, targets in graph.adjacency_list.items() for target in targets),
    }
    entities.logger.info(GRAPH_MESSAGE, json.dumps(steps_and_edges))


def install() -> None:
    """Idempotent. Raises SdkPatchError instead of half-patching an SDK it does not know."""
    require("sagemaker")
    if local_session.LocalSagemakerClient.create_training_job is _create_training_job:
        return  # installed: the signature checks ran against the SDK's own functions
    check_sdk()
    image._SageMakerContainer._compose = _compose
    image._SageMakerContainer._get_compose_cmd_prefix = staticmethod(_no_compose_binary)
    image._ecr_login_if_needed = _no_ecr_login
    image._aws_credentials = _credentials_from_environment
    local_session.LocalSagemakerClient.create_training_job = _create_training_job
    local_pipeline._StepExecutorFactory.get = _executor_for
    entities._LocalPipelineExecutionStep.__init__ = _step_init
    entities._LocalPipelineExecution._initialize_step_execution = _initialize_step_execution
    validate_config_once()


def validate_config_once() -> None:
    """Only the config-validation memo: also used when definitions are exported for AWS."""
    require("sagemaker")
    sagemaker.utils.validate_sagemaker_config = _validate_once
