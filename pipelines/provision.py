"""`sagegate provision endpoint`: an endpoint for a model's serving version, from its YAML settings.

On AWS it deploys `cloudformation/endpoint-{serverless,realtime}.yaml` with the settings as
parameters; locally it creates (or updates, blue/green) the local endpoint through the same
endpoint manager the gate's SageMaker tasks use. CLI options override the YAML's `deployment`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from pydantic import ValidationError

from pipelines.config import ConfigError, ModelConfig
from pipelines.local.endpoints import EndpointManager
from pipelines.state import Project, StateHome

OVERRIDES = {
    "deployment_type": "type",
    "instance_type": "instance_type",
    "min_instances": "min_instances",
    "max_instances": "max_instances",
    "scale_in_cooldown": "scale_in_cooldown",
    "scale_out_cooldown": "scale_out_cooldown",
    "target_invocations": "target_invocations_per_instance",
    "memory_size_mb": "memory_size_mb",
    "max_concurrency": "max_concurrency",
}


class ProvisionError(RuntimeError):
    """Nothing to provision (no registered version, endpoint in an update...)."""


def with_overrides(config: ModelConfig, values: dict[str, Any]) -> ModelConfig:
    """The config with CLI overrides applied to `deployment` (validated like the YAML)."""
    deployment = config.deployment.model_dump()
    deployment.update({OVERRIDES[k]: v for k, v in values.items() if k in OVERRIDES and v is not None})
    data = config.model_dump(by_alias=True)
    data["deployment"] = deployment
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as error:
        options = {field: option for option, field in OVERRIDES.items()}
        problems = []
        for item in error.errors():
            field = str(item["loc"][-1])
            name = f"--{options[field].replace('_', '-')}" if field in options else "deployment." + field
            problems.append(f"{name}: {item['msg']} (got {item.get('input')!r})")
        raise ConfigError("; ".join(problems)) from None


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def template_parameters(config: ModelConfig, project: Project, model_package_arn: str) -> tuple[str, dict[str, str]]:
    """Which endpoint template, with which parameters, for this config."""
    deployment = config.deployment
    parameters = {
        "Project": project.prefix,
        "Environment": project.environment,
        "ModelName": config.name,
        "ModelPackageArn": model_package_arn,
        "DeploymentHash": _hash(model_package_arn, deployment.model_dump()),
    }
    if deployment.type == "serverless":
        parameters |= {
            "MemorySizeInMB": str(deployment.memory_size_mb),
            "MaxConcurrency": str(deployment.max_concurrency),
        }
        return "endpoint-serverless.yaml", parameters
    parameters |= {
        "InstanceType": deployment.instance_type,
        "MinInstances": str(deployment.min_instances),
        "MaxInstances": str(deployment.max_instances),
        "ScaleInCooldown": str(deployment.scale_in_cooldown),
        "ScaleOutCooldown": str(deployment.scale_out_cooldown),
        "TargetInvocationsPerInstance": str(deployment.target_invocations_per_instance),
    }
    return "endpoint-realtime.yaml", parameters


def aws_deploy_command(config: ModelConfig, project: Project, model_package_arn: str) -> list[str]:
    template, parameters = template_parameters(config, project, model_package_arn)
    return [
        "aws", "cloudformation", "deploy",
        "--region", project.region,
        "--stack-name", f"{project.prefix}-{project.environment}-{config.name}-endpoint",
        "--template-file", f"cloudformation/{template}",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides", *(f"{k}={v}" for k, v in parameters.items()),
    ]  # fmt: skip


def _register_scaling(manager: EndpointManager, component: str, config: ModelConfig) -> None:
    """What the endpoint template's scaling resources (and the gate's realtime branch) register."""
    deployment = config.deployment
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": f"inference-component/{component}",
        "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount",
    }
    manager.call(
        "registerScalableTarget",
        {**target, "MinCapacity": deployment.min_instances, "MaxCapacity": deployment.max_instances},
    )
    manager.call(
        "putScalingPolicy",
        {
            **target,
            "PolicyName": f"{component}-invocations-per-copy",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
                },
                "TargetValue": deployment.target_invocations_per_instance,
                "ScaleInCooldown": deployment.scale_in_cooldown,
                "ScaleOutCooldown": deployment.scale_out_cooldown,
            },
        },
    )


def _variant(deployment: Any, name: str, model_name: str | None, weight: float) -> dict[str, Any]:
    if deployment.type == "serverless":
        sizing: dict[str, Any] = {
            "ServerlessConfig": {
                "MemorySizeInMB": deployment.memory_size_mb,
                "MaxConcurrency": deployment.max_concurrency,
            }
        }
    else:
        sizing = {
            "InstanceType": deployment.instance_type,
            "InitialInstanceCount": 1,
            "ManagedInstanceScaling": {
                "Status": "ENABLED",
                "MinInstanceCount": deployment.min_instances,
                "MaxInstanceCount": deployment.max_instances,
            },
        }
    variant = {"VariantName": name, "InitialVariantWeight": weight, **sizing}
    return variant | ({"ModelName": model_name} if model_name else {})


def provision_local(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    version: str | None,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Create or update the local endpoint for `version` (default: the champion, else the newest).

    `weights` ({version: weight}) makes an A/B endpoint instead: one production variant `v{N}` per
    version, traffic split by weight (each variant hosts its model directly, no inference component).
    """
    from pipelines.local_gate import _container
    from pipelines.registry import VersionNotFound, find_version

    name = f"{project.prefix}-{project.environment}-{config.name}"
    try:  # default: the champion, else the newest
        picked = [find_version(home, name, v, prefer_alias="champion") for v in (weights or {version: 1.0})]
    except VersionNotFound as error:
        raise ProvisionError(f"model {config.name}: {error}") from None
    deployment = config.deployment
    digest = uuid.uuid4().hex[:8]  # new model and config names per provisioning; the endpoint keeps its name
    config_name, endpoint_name = f"{name}-config-{digest}", f"{name}-{deployment.type}"
    manager = EndpointManager(home, project)
    variants = []
    for index, chosen in enumerate(picked):
        model_name = f"{name}-{digest}" + (f"-v{chosen['version']}" if weights else "")
        manager.call(
            "createModel",
            {
                "ModelName": model_name,
                "PrimaryContainer": _container(config, project, chosen["model_data_uri"]),
                "ExecutionRoleArn": f"arn:aws:iam::{project.account}:role/{name.rsplit('-', 1)[0]}-sagemaker-inference",
            },
        )
        if weights:
            weight = float(list(weights.values())[index])
            variants.append(_variant(deployment, f"v{chosen['version']}", model_name, weight))
        else:
            hosted = model_name if deployment.type == "serverless" else None  # realtime: an inference component
            variants.append(_variant(deployment, "AllTraffic", hosted, 1.0))
    manager.call("createEndpointConfig", {"EndpointConfigName": config_name, "ProductionVariants": variants})
    exists = endpoint_name in manager.snapshot()["endpoints"]
    action = "updateEndpoint" if exists else "createEndpoint"
    manager.call(action, {"EndpointName": endpoint_name, "EndpointConfigName": config_name})
    described = manager.call("describeEndpoint", {"EndpointName": endpoint_name})
    if deployment.type == "realtime" and not weights and described["EndpointStatus"] == "InService":
        component = f"{name}-component"
        specification = {"ModelName": f"{name}-{digest}"}
        if component in manager.snapshot()["inference_components"]:
            manager.call(
                "updateInferenceComponent", {"InferenceComponentName": component, "Specification": specification}
            )
        else:
            manager.call(
                "createInferenceComponent",
                {
                    "InferenceComponentName": component,
                    "EndpointName": endpoint_name,
                    "VariantName": "AllTraffic",
                    "Specification": specification,
                    "RuntimeConfig": {"CopyCount": 1},
                },
            )
        described["InferenceComponent"] = manager.call(
            "describeInferenceComponent", {"InferenceComponentName": component}
        )
        _register_scaling(manager, component, config)
    described["Version"] = ",".join(chosen["version"] for chosen in picked)
    described["Updated"] = exists
    return described
