"""The deployment quality gate: a Step Functions state machine built with the Data Science SDK.

Evaluate (Lambda) → Choice on its decision → realtime branch | serverless branch | Rejected.
Each deploy branch creates the Model and an endpoint config, creates the endpoint or updates
it (blue/green: the old config serves until the new one is InService), polls describeEndpoint
with Wait/Choice, and ends by recording the champion. The exported ASL is what CloudFormation
deploys (with `${...}` DefinitionSubstitutions) and what runs locally in moto's interpreter.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from stepfunctions.steps import Catch, Chain, Choice, ChoiceRule, Fail, Pass, Retry, Succeed, Task, Wait
from stepfunctions.steps.states import Graph

from pipelines.config import ModelConfig
from pipelines.containers import locked_versions
from pipelines.contract import DIGEST
from pipelines.local.sfn_sdk_patch import cause_path, result_selector
from pipelines.state import Project

# DefinitionSubstitutions filled in by the CloudFormation template (and by the local runner).
EVALUATOR_ARN = "${EvaluatorFunctionArn}"
PROMOTER_ARN = "${PromoterFunctionArn}"
INFERENCE_ROLE_ARN = "${InferenceRoleArn}"
SUBSTITUTIONS = ("EvaluatorFunctionArn", "PromoterFunctionArn", "InferenceRoleArn")
GATE_FUNCTIONS = ("evaluator", "promoter")  # lambdas/<kind>/app.py, deployed as {project}-{env}-gate-<kind>

TRANSIENT_LAMBDA_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
SAGEMAKER = "arn:aws:states:::sagemaker:"
SAGEMAKER_SDK = "arn:aws:states:::aws-sdk:sagemaker:"
AUTOSCALING_SDK = "arn:aws:states:::aws-sdk:applicationautoscaling:"
CLOUDWATCH_SDK = "arn:aws:states:::aws-sdk:cloudwatch:"
TARGET = "$.evaluation.target"
DESCRIBED = "$.described"  # the last describe of what a deploy branch waits for


def model_settings(config: ModelConfig, project: Project) -> dict[str, Any]:
    """The model YAML's part of the gate's execution input: task, thresholds, deployment settings
    (validated by the YAML's schema, `pipelines.contract`) and the names the deployment uses."""
    model = config.name
    return {
        "task": config.task,
        "quality_gate": {m: t.model_dump(exclude_none=True) for m, t in config.quality_gate.metrics.items()},
        "deployment": config.deployment.model_dump(exclude={"llm"}),  # LLM endpoints: provision, not the gate
        "resources": {
            "endpoint_name": project.endpoint_name(model, config.deployment.type),
            "model_name": project.model_name(model, DIGEST),
            "endpoint_config_name": project.endpoint_config_name(model, DIGEST),
            "inference_component_name": project.inference_component_name(model),
            "champion_artifact_uri": project.champion_artifact_uri(model),
        },
        "runtime_libraries": locked_versions(),
        "data_capture": {
            "enabled": config.captures(),
            "sampling_percentage": config.monitoring.data_capture.sampling_percentage if config.monitoring else 100,
            "destination_s3_uri": project.capture_uri,
        },
    }


def _lambda_task(state_id: str, function_arn: str, payload: dict[str, Any], result_path: str | None) -> Task:
    task = Task(
        state_id,
        resource="arn:aws:states:::lambda:invoke",
        parameters={"FunctionName": function_arn, "Payload": payload},
        result_path=result_path,
    )
    result_selector(task, {"Payload.$": "$.Payload"})
    task.add_retry(Retry(error_equals=TRANSIENT_LAMBDA_ERRORS, interval_seconds=1, backoff_rate=2.0, max_attempts=3))
    return task


def _service_task(state_id: str, resource: str, parameters: dict[str, Any], result_path: str | None = None) -> Task:
    return Task(state_id, resource=resource, parameters=parameters, result_path=result_path)


def _fail(state_id: str, error: str, cause: str) -> Fail:
    return cause_path(Fail(state_id, error=error), cause)


def _endpoint_config_parameters(kind: str) -> dict[str, Any]:
    if kind == "serverless":
        variant = {
            "VariantName": "AllTraffic",
            "ModelName.$": f"{TARGET}.model_name",
            "ServerlessConfig": {
                "MemorySizeInMB.$": "$.deployment.memory_size_mb",
                "MaxConcurrency.$": "$.deployment.max_concurrency",
            },
        }
        return {"EndpointConfigName.$": f"{TARGET}.endpoint_config_name", "ProductionVariants": [variant]}
    # Scale-to-zero: no ModelName in the variant (the inference component carries the model),
    # managed instance scaling down to zero, and an execution role on the config.
    variant = {
        "VariantName": "AllTraffic",
        "InstanceType.$": "$.deployment.instance_type",
        "InitialInstanceCount": 1,
        "ManagedInstanceScaling": {
            "Status": "ENABLED",
            "MinInstanceCount.$": "$.deployment.min_instances",
            "MaxInstanceCount.$": "$.deployment.max_instances",
        },
        "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
    }
    return {
        "EndpointConfigName.$": f"{TARGET}.endpoint_config_name",
        "ExecutionRoleArn": INFERENCE_ROLE_ARN,
        "ProductionVariants": [variant],
        "DataCaptureConfig": {
            "EnableCapture.$": "$.data_capture.enabled",
            "InitialSamplingPercentage.$": "$.data_capture.sampling_percentage",
            "DestinationS3Uri.$": "$.data_capture.destination_s3_uri",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            # captured as CSV/JSON text rather than base64, so the monitor reads them as they were sent
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
        },
    }


def _poll(
    name: str, resource: str, parameters: dict[str, Any], status: str, done: ChoiceRule, next_state: Any, ends: _Ends
) -> Wait:
    """Wait → describe (into `$.described`) → Choice: done → next_state; Failed, or InService on the
    old version (the update was rolled back) → DeploymentRolledBack, its cause the describe's
    FailureReason (which names the alarm); anything else → wait again."""
    wait = Wait(f"WaitFor{name}", seconds_path="$.poll_seconds")
    describe = _service_task(f"Describe{name}", resource, parameters, result_path=DESCRIBED)
    describe.add_catch(Catch(error_equals=["States.ALL"], next_step=ends.failed, result_path="$.error"))
    check = Choice(f"Check{name}")
    check.add_choice(done, next_state)
    for value in ("Failed", "InService"):
        check.add_choice(ChoiceRule.StringEquals(variable=f"{DESCRIBED}.{status}", value=value), ends.rolled_back)
    check.default_choice(wait)
    Chain([wait, describe, check])
    return wait


def _rolled_back() -> Choice:
    """DeploymentRolledBack, with the reason SageMaker gave (an alarm, a model that cannot serve) as its cause."""
    rolled_back = _fail("DeploymentRolledBack", "Sagegate.DeploymentRolledBack", "$.rollback.Cause")
    explain = Choice("ExplainRollback")
    with_reason = Pass("RollbackReason", parameters={"Cause.$": f"{DESCRIBED}.FailureReason"}, result_path="$.rollback")
    without = Pass(
        "RollbackWithoutReason",
        result={"Cause": "The new version did not reach InService; the previously deployed version keeps serving."},
        result_path="$.rollback",
    )
    explain.add_choice(ChoiceRule.IsPresent(variable=f"{DESCRIBED}.FailureReason", value=True), with_reason)
    explain.default_choice(without)
    with_reason.next(rolled_back)
    without.next(rolled_back)
    return explain


@dataclass(frozen=True)
class _Ends:
    """Where every deploy branch ends: recording the champion, or one of two named failures."""

    record: Task
    failed: Fail
    rolled_back: Choice


def _deploy_branch(kind: str, ends: _Ends) -> Task:
    """CreateModel → CreateEndpointConfig → create or update the endpoint → poll [→ inference component]."""
    title = kind.capitalize()
    endpoint_key = f"{title}Endpoint"
    endpoint_done = ChoiceRule.And(
        [
            ChoiceRule.StringEquals(variable=f"{DESCRIBED}.EndpointStatus", value="InService"),
            ChoiceRule.StringEqualsPath(
                variable=f"{DESCRIBED}.EndpointConfigName", value=f"{TARGET}.endpoint_config_name"
            ),
        ]
    )
    if kind == "realtime":
        after_endpoint = _inference_component_steps(ends)
    else:
        after_endpoint = ends.record
    poll_endpoint = _poll(
        endpoint_key,
        f"{SAGEMAKER_SDK}describeEndpoint",
        {"EndpointName.$": f"{TARGET}.endpoint_name"},
        "EndpointStatus",
        endpoint_done,
        after_endpoint,
        ends,
    )
    create_model = _service_task(
        f"Create{title}Model",
        f"{SAGEMAKER}createModel",
        {
            "ModelName.$": f"{TARGET}.model_name",
            "ExecutionRoleArn": INFERENCE_ROLE_ARN,
            "PrimaryContainer.$": "$.container",
        },
    )
    create_config = _service_task(
        f"Create{title}EndpointConfig", f"{SAGEMAKER}createEndpointConfig", _endpoint_config_parameters(kind)
    )
    find = _service_task(
        f"Find{title}Endpoint",
        f"{SAGEMAKER_SDK}describeEndpoint",
        {"EndpointName.$": f"{TARGET}.endpoint_name"},
        result_path=None,
    )
    endpoint_parameters = {
        "EndpointName.$": f"{TARGET}.endpoint_name",
        "EndpointConfigName.$": f"{TARGET}.endpoint_config_name",
    }
    create_endpoint = _service_task(f"Create{title}Endpoint", f"{SAGEMAKER}createEndpoint", endpoint_parameters)
    update_endpoint = _service_task(f"Update{title}Endpoint", f"{SAGEMAKER}updateEndpoint", endpoint_parameters)
    # describeEndpoint fails for an endpoint that does not exist yet: that is the "create" path.
    find.add_catch(Catch(error_equals=["States.TaskFailed"], next_step=create_endpoint, result_path=None))
    for task in (create_model, create_config, create_endpoint, update_endpoint):
        task.add_catch(Catch(error_equals=["States.ALL"], next_step=ends.failed, result_path="$.error"))
    Chain([create_model, create_config, find, update_endpoint, poll_endpoint])
    create_endpoint.next(poll_endpoint)
    return create_model


def _scale_to_zero_steps(ends: _Ends) -> Task:
    """Copies of the component scale with traffic and down to zero: a scalable target (min
    `min_instances`), target tracking on invocations per copy (scale-in after the cooldown), and a
    +1 step policy fired by an alarm on NoCapacityInvocationFailures (a request that found no copy)."""
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId.$": f"{TARGET}.scalable_resource_id",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
    }
    register = _service_task(
        "RegisterScalableTarget",
        f"{AUTOSCALING_SDK}registerScalableTarget",
        {**target, "MinCapacity.$": "$.deployment.min_instances", "MaxCapacity.$": "$.deployment.max_instances"},
    )
    tracking = _service_task(
        "PutInvocationsScalingPolicy",
        f"{AUTOSCALING_SDK}putScalingPolicy",
        {
            **target,
            "PolicyName.$": f"States.Format('{{}}-invocations-per-copy', {TARGET}.scaling_policy_prefix)",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
                },
                "TargetValue.$": "$.deployment.target_invocations_per_instance",
                "ScaleInCooldown.$": "$.deployment.scale_in_cooldown",
                "ScaleOutCooldown.$": "$.deployment.scale_out_cooldown",
            },
        },
    )
    step = _service_task(
        "PutScaleOutFromZeroPolicy",
        f"{AUTOSCALING_SDK}putScalingPolicy",
        {
            **target,
            "PolicyName.$": f"States.Format('{{}}-scale-out-from-zero', {TARGET}.scaling_policy_prefix)",
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Maximum",
                "Cooldown.$": "$.deployment.scale_out_cooldown",
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            },
        },
        result_path="$.scaleOutPolicy",
    )
    result_selector(step, {"PolicyARN.$": "$.PolicyARN"})
    alarm = _service_task(
        "PutNoCapacityAlarm",
        f"{CLOUDWATCH_SDK}putMetricAlarm",
        {
            "AlarmName.$": f"States.Format('{{}}-no-capacity', {TARGET}.scaling_policy_prefix)",
            "Namespace": "AWS/SageMaker",
            "MetricName": "NoCapacityInvocationFailures",
            "Dimensions": [{"Name": "InferenceComponentName", "Value.$": f"{TARGET}.inference_component_name"}],
            "Statistic": "Maximum",
            "Period": 60,
            "EvaluationPeriods": 1,
            "Threshold": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions.$": "States.Array($.scaleOutPolicy.PolicyARN)",
        },
    )
    for task in (register, tracking, step, alarm):
        task.add_catch(Catch(error_equals=["States.ALL"], next_step=ends.failed, result_path="$.error"))
    Chain([register, tracking, step, alarm, ends.record])
    return register


def _inference_component_steps(ends: _Ends) -> Task:
    """Realtime: the model runs as an inference component (copies scale to zero with the instances)."""
    component = {
        "InferenceComponentName.$": f"{TARGET}.inference_component_name",
        "Specification": {
            "ModelName.$": f"{TARGET}.model_name",
            "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 1024, "NumberOfCpuCoresRequired": 1},
        },
        "RuntimeConfig": {"CopyCount": 1},
    }
    find = _service_task(
        "FindInferenceComponent",
        f"{SAGEMAKER_SDK}describeInferenceComponent",
        {"InferenceComponentName.$": f"{TARGET}.inference_component_name"},
        result_path=None,
    )
    create = _service_task(
        "CreateInferenceComponent",
        f"{SAGEMAKER_SDK}createInferenceComponent",
        {**component, "EndpointName.$": f"{TARGET}.endpoint_name", "VariantName": "AllTraffic"},
    )
    update = _service_task("UpdateInferenceComponent", f"{SAGEMAKER_SDK}updateInferenceComponent", component)
    rolling = _service_task(
        "UpdateInferenceComponentRolling",
        f"{SAGEMAKER_SDK}updateInferenceComponent",
        {**component, "DeploymentConfig": _rolling_update_config()},
    )
    find.add_catch(Catch(error_equals=["States.TaskFailed"], next_step=create, result_path=None))
    for task in (create, update, rolling):
        task.add_catch(Catch(error_equals=["States.ALL"], next_step=ends.failed, result_path="$.error"))
    done = ChoiceRule.And(
        [
            ChoiceRule.StringEquals(variable=f"{DESCRIBED}.InferenceComponentStatus", value="InService"),
            ChoiceRule.StringEqualsPath(variable=f"{DESCRIBED}.Specification.ModelName", value=f"{TARGET}.model_name"),
        ]
    )
    poll = _poll(
        "InferenceComponent",
        f"{SAGEMAKER_SDK}describeInferenceComponent",
        {"InferenceComponentName.$": f"{TARGET}.inference_component_name"},
        "InferenceComponentStatus",
        done,
        _scale_to_zero_steps(ends),
        ends,
    )
    rolling.next(poll)
    find.next(_rollout_steps(update, rolling, ends))
    update.next(poll)
    create.next(poll)
    return find


def _rolling_update_config() -> dict[str, Any]:
    """The inference component's DeploymentConfig: batches of `$.rolloutBatch.percent` of its capacity,
    each baked `wait_seconds` under the two rollback alarms, then rolled back whole if one fires."""
    prefix = f"{TARGET}.scaling_policy_prefix"
    return {
        "RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value.$": "$.rolloutBatch.percent"},
            "WaitIntervalInSeconds.$": "$.deployment.rollout.wait_seconds",
            "MaximumExecutionTimeoutInSeconds.$": "$.deployment.rollout.max_execution_seconds",
            "RollbackMaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 100},
        },
        "AutoRollbackConfiguration": {
            "Alarms": [
                {"AlarmName.$": f"States.Format('{{}}-rollback-errors', {prefix})"},
                {"AlarmName.$": f"States.Format('{{}}-rollback-latency', {prefix})"},
            ]
        },
    }


def _rollout_alarm(kind: str, metrics: list[dict[str, Any]], threshold: str) -> Task:
    """A rollback alarm on the inference component's metrics (metric math; the last query is the value)."""
    return _service_task(
        f"PutRollback{kind.capitalize()}Alarm",
        f"{CLOUDWATCH_SDK}putMetricAlarm",
        {
            "AlarmName.$": f"States.Format('{{}}-rollback-{kind}', {TARGET}.scaling_policy_prefix)",
            "Metrics": metrics,
            "Threshold.$": threshold,
            "ComparisonOperator": "GreaterThanThreshold",
            "EvaluationPeriods": 1,
            "TreatMissingData": "notBreaching",
        },
    )


def _component_metric(query: str, name: str, stat: str) -> dict[str, Any]:
    return {
        "Id": query,
        "ReturnData": False,
        "MetricStat": {
            "Metric": {
                "Namespace": "AWS/SageMaker",
                "MetricName": name,
                "Dimensions": [{"Name": "InferenceComponentName", "Value.$": f"{TARGET}.inference_component_name"}],
            },
            "Period": 60,
            "Stat": stat,
        },
    }


def _rollout_steps(update: Task, rolling: Task, ends: _Ends) -> Choice:
    """all_at_once → the plain update; canary/linear → the batch size, the rollback alarms, the rolling update."""
    choose = Choice("ChooseRollout")
    choose.add_choice(ChoiceRule.StringEquals(variable="$.deployment.rollout.type", value="all_at_once"), update)
    alarms = [
        _rollout_alarm(
            "errors",
            [
                _component_metric("client", "Invocation4XXErrors", "Sum"),
                _component_metric("server", "Invocation5XXErrors", "Sum"),
                _component_metric("invocations", "Invocations", "Sum"),
                {"Id": "rate", "Expression": "(client + server) / invocations", "ReturnData": True},
            ],
            "$.deployment.rollout.rollback_on.error_rate",
        ),
        _rollout_alarm(
            "latency",
            [
                _component_metric("latency", "ModelLatency", "p99"),
                {"Id": "milliseconds", "Expression": "latency / 1000", "ReturnData": True},  # ModelLatency is in µs
            ],
            "$.deployment.rollout.rollback_on.p99_latency_ms",
        ),
    ]
    for alarm in alarms:
        alarm.add_catch(Catch(error_equals=["States.ALL"], next_step=ends.failed, result_path="$.error"))
    for kind in ("canary", "linear"):
        batch = Pass(
            f"{kind.capitalize()}Batch",
            parameters={
                "percent.$": f"$.deployment.rollout.{'canary_percent' if kind == 'canary' else 'linear_step_percent'}"
            },
            result_path="$.rolloutBatch",
        )
        choose.add_choice(ChoiceRule.StringEquals(variable="$.deployment.rollout.type", value=kind), batch)
        batch.next(alarms[0])
    choose.default_choice(ends.failed)
    Chain([*alarms, rolling])
    return choose


def build_state_machine() -> Chain:
    """The gate's states, wired; the same for every model (the model config arrives as input)."""
    failed = _fail("DeploymentFailed", "Sagegate.DeploymentFailed", "$.error.Cause")
    rolled_back = _rolled_back()
    deployed = Succeed("Deployed")
    record = _lambda_task(
        "RecordChampion",
        PROMOTER_ARN,
        {
            "model.$": "$.model",
            "container.$": "$.container",
            "registered_model.$": "$.registered_model",
            "version.$": "$.version",
            "model_package_arn.$": "$.model_package_arn",
            "endpoint_name.$": f"{TARGET}.endpoint_name",
            "execution_name.$": "$$.Execution.Name",
            "champion_artifact_uri.$": "$.resources.champion_artifact_uri",
            "evaluation_uri.$": "$.evaluation_uri",
        },
        result_path="$.champion",
    )
    record.add_catch(
        Catch(
            error_equals=["States.ALL"],
            next_step=_fail("ChampionNotRecorded", "Sagegate.ChampionNotRecorded", "$.error.Cause"),
            result_path="$.error",
        )
    )
    record.next(deployed)
    ends = _Ends(record=record, failed=failed, rolled_back=rolled_back)

    evaluate = _lambda_task(
        "EvaluateModel",
        EVALUATOR_ARN,
        {"gate.$": "$", "execution_name.$": "$$.Execution.Name"},
        result_path="$.evaluation",
    )
    result_selector(
        evaluate,
        {
            "decision.$": "$.Payload.decision",
            "reason.$": "$.Payload.reason",
            "reasons.$": "$.Payload.reasons",
            "metrics.$": "$.Payload.metrics",
            "champion.$": "$.Payload.champion",
            "target.$": "$.Payload.target",
        },
    )
    evaluate.add_catch(
        Catch(
            error_equals=["States.ALL"],
            next_step=_fail("EvaluationFailed", "Sagegate.EvaluationFailed", "$.error.Cause"),
            result_path="$.error",
        )
    )
    choose = Choice("ChooseDeployment")
    choose.add_choice(
        ChoiceRule.StringEquals(variable="$.evaluation.decision", value="deploy_realtime"),
        _deploy_branch("realtime", ends),
    )
    choose.add_choice(
        ChoiceRule.StringEquals(variable="$.evaluation.decision", value="deploy_serverless"),
        _deploy_branch("serverless", ends),
    )
    choose.default_choice(_fail("Rejected", "Sagegate.Rejected", "$.evaluation.reason"))
    return Chain([evaluate, choose])


def gate_definition() -> dict[str, Any]:
    """The ASL as a dict, `${...}` substitutions left in place."""
    definition = json.loads(Graph(build_state_machine()).to_json())
    definition["Comment"] = (
        "sagegate deployment gate: evaluate a registered model version, then deploy it "
        "(realtime or serverless) or reject it with the evaluator's reasons"
    )
    return definition


def deploy_definition() -> dict[str, Any]:
    """The gate's deploy branches alone, entered at ChooseDeployment with a ready `evaluation`:
    how `sagegate provision endpoint` deploys locally, through exactly the gate's states."""
    definition = gate_definition()
    definition["StartAt"] = "ChooseDeployment"
    for unreachable in ("EvaluateModel", "EvaluationFailed"):
        del definition["States"][unreachable]
    definition["Comment"] = "sagegate deploy: the deployment gate's deploy branches, entered after evaluation"
    return definition


def gate_definition_json() -> str:
    return json.dumps(gate_definition(), indent=2, sort_keys=False)


def substitute(definition: dict[str, Any], values: dict[str, str]) -> str:
    """Fill the `${Name}` placeholders as CloudFormation's DefinitionSubstitutions would."""
    text = json.dumps(definition)
    missing = [name for name in SUBSTITUTIONS if name not in values]
    if missing:
        raise ValueError(f"missing definition substitutions: {', '.join(missing)}")
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text
