"""`sagegate provision endpoint`: an endpoint for a model's serving version, from its YAML settings.

On AWS it deploys `cloudformation/endpoint-{serverless,realtime}.yaml` with the settings as
parameters; locally it runs the deployment gate's own deploy branches (everything after the
evaluation), so the two create the same resources. CLI options override the YAML's `deployment`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from pydantic import ValidationError

from pipelines.config import ConfigError, ModelConfig
from pipelines.local.endpoints import EndpointManager
from pipelines.local_gate import serving_container
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


def llm_parameters(config: ModelConfig, project: Project) -> dict[str, str]:
    deployment = config.deployment
    llm = deployment.llm
    assert llm is not None
    return {
        "Project": project.prefix,
        "Environment": project.environment,
        "ModelName": config.name,
        "BaseModel": llm.base_model,
        "AdapterS3Uri": llm.adapter_s3_uri,
        "ContainerImage": llm.container_image,
        "HfTokenSecretArn": llm.hf_token_secret_arn or "",
        "InstanceType": deployment.instance_type,
        "MemoryRequiredInMb": str(llm.memory_mb),
        "AcceleratorsRequired": str(llm.accelerators),
        "MinInstances": str(deployment.min_instances),
        "MaxInstances": str(deployment.max_instances),
        "ScaleInCooldown": str(deployment.scale_in_cooldown),
        "ScaleOutCooldown": str(deployment.scale_out_cooldown),
        "TargetInvocationsPerCopy": str(max(1, round(deployment.target_invocations_per_instance))),
    }


def llm_template(config: ModelConfig) -> dict[str, Any]:
    """endpoint-llm.yaml with the YAML's container environment filled in: a map CloudFormation
    parameters cannot carry. HF_MODEL_ID and the token stay the template's (base_model, the secret)."""
    from pipelines.templates import load

    llm = config.deployment.llm
    assert llm is not None
    template = load("endpoint-llm.yaml")
    container = template["Resources"]["BaseComponent"]["Properties"]["Specification"]["Container"]
    container["Environment"] = {**llm.environment, **container["Environment"]}
    return template


def template_parameters(
    config: ModelConfig, project: Project, model_package_arn: str | None
) -> tuple[str, dict[str, str]]:
    """Which endpoint template, with which parameters, for this config."""
    deployment = config.deployment
    if deployment.llm is not None:
        return "endpoint-llm.yaml", llm_parameters(config, project)
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
    rollout = deployment.rollout
    if rollout.type != "all_at_once":
        parameters |= {
            "RolloutBatchPercent": str(rollout.batch_percent),
            "RolloutWaitSeconds": str(rollout.wait_seconds),
            "RolloutMaxExecutionSeconds": str(rollout.max_execution_seconds),
            "RollbackErrorRate": str(rollout.rollback_on.error_rate),
            "RollbackP99LatencyMs": str(rollout.rollback_on.p99_latency_ms),
        }
    if config.captures():
        assert config.monitoring is not None
        parameters |= {
            "DataCaptureDestination": project.capture_uri,
            "DataCaptureSamplingPercentage": str(config.monitoring.data_capture.sampling_percentage),
        }
    return "endpoint-realtime.yaml", parameters


def ab_template_parameters(
    config: ModelConfig, project: Project, weights: dict[str, float], role: str = "production"
) -> tuple[str, dict[str, str]]:
    """The two-variant endpoint stack: two registered versions (their Model Registry packages) with
    weights; `role: shadow` makes the second a shadow variant (its weight: the share copied to it)."""
    if len(weights) != 2 or not all(version.isdigit() for version in weights):
        raise ProvisionError(f"an A/B endpoint on AWS serves two version numbers (got {', '.join(weights)})")
    deployment = config.deployment
    (a, a_weight), (b, b_weight) = weights.items()
    group = project.registered_model(config.name)
    return "endpoint-ab.yaml", {
        "Project": project.prefix,
        "Environment": project.environment,
        "ModelName": config.name,
        "DeploymentHash": _hash(weights, role, deployment.model_dump()),
        "DeploymentType": deployment.type,
        "VariantAVersion": a,
        "VariantAPackageArn": project.model_package_arn(group, a),
        "VariantAWeight": str(a_weight),
        "VariantBVersion": b,
        "VariantBPackageArn": project.model_package_arn(group, b),
        "VariantBWeight": str(b_weight),
        "VariantBRole": role,
        **(
            {"MemorySizeInMB": str(deployment.memory_size_mb), "MaxConcurrency": str(deployment.max_concurrency)}
            if deployment.type == "serverless"
            else {"InstanceType": deployment.instance_type}
        ),
    }


def shadow_template_parameters(
    config: ModelConfig, project: Project, version: str | None
) -> tuple[str, dict[str, str]]:
    """The shadow-test stack: `version` in production, the YAML's `deployment.shadow` beside it."""
    shadow = config.deployment.shadow
    assert shadow is not None
    if not (version or "").isdigit() or not str(shadow.version).isdigit():
        raise ProvisionError(
            "a shadow test on AWS names both version numbers: --version N (production) and deployment.shadow.version "
            f"(got {version!r} and {shadow.version!r}; aliases are resolved locally only)"
        )
    assert version is not None
    weights = {version: 1.0, str(shadow.version): shadow.sampling_percentage / 100}
    return ab_template_parameters(config, project, weights, role="shadow")


def variant_weights(config: ModelConfig) -> dict[str, float] | None:
    """The YAML's `deployment.variants` as {version: weight} (what `--ab` gives), or None."""
    variants = config.deployment.variants
    return {str(variant.version): variant.weight for variant in variants} if variants else None


def aws_deploy_command(
    config: ModelConfig, project: Project, template: str, parameters: dict[str, str], template_file: str | None = None
) -> list[str]:
    """`template_file`: a specialised template (llm_template) instead of cloudformation/{template}."""
    return [
        "aws", "cloudformation", "deploy",
        "--region", project.region,
        "--stack-name", project.stack_name(config.name, "endpoint"),
        "--template-file", template_file or f"cloudformation/{template}",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides", *(f"{k}={v}" for k, v in parameters.items()),
    ]  # fmt: skip


def _ab_variant(deployment: Any, name: str, model_name: str, weight: float) -> dict[str, Any]:
    if deployment.type == "serverless":
        sizing: dict[str, Any] = {
            "ServerlessConfig": {
                "MemorySizeInMB": deployment.memory_size_mb,
                "MaxConcurrency": deployment.max_concurrency,
            }
        }
    else:
        sizing = {"InstanceType": deployment.instance_type, "InitialInstanceCount": 1}
    return {"VariantName": name, "InitialVariantWeight": weight, "ModelName": model_name, **sizing}


def _provision_variants(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    picked: list[dict],
    weights: list[float],
    shadow: tuple[dict, float] | None = None,
) -> dict:
    """An endpoint whose variants host their models directly: one production variant `v{N}` per
    version (A/B by weight), or one with a shadow variant that gets a copy of `sampling` of the
    requests. (The gate's branches deploy one version; these are the shapes they do not cover.)"""
    manager = EndpointManager(home, project)
    digest = uuid.uuid4().hex[:8]

    def variant(chosen: dict, weight: float) -> dict[str, Any]:
        model_name = project.model_name(config.name, f"{digest}-v{chosen['version']}")
        manager.call(
            "createModel",
            {
                "ModelName": model_name,
                "PrimaryContainer": serving_container(project, chosen["model_data_uri"]),
                "ExecutionRoleArn": project.inference_role_arn,
            },
        )
        return _ab_variant(config.deployment, f"v{chosen['version']}", model_name, weight)

    endpoint_config: dict[str, Any] = {
        "EndpointConfigName": project.endpoint_config_name(config.name, digest),
        "ProductionVariants": [variant(chosen, weight) for chosen, weight in zip(picked, weights, strict=True)],
    }
    if shadow is not None:
        endpoint_config["ShadowProductionVariants"] = [variant(shadow[0], shadow[1])]
    endpoint_name = project.endpoint_name(config.name, config.deployment.type)
    manager.call("createEndpointConfig", endpoint_config)
    exists = endpoint_name in manager.snapshot()["endpoints"]
    manager.call(
        "updateEndpoint" if exists else "createEndpoint",
        {"EndpointName": endpoint_name, "EndpointConfigName": endpoint_config["EndpointConfigName"]},
    )
    described = manager.call("describeEndpoint", {"EndpointName": endpoint_name})
    versions = ",".join(c["version"] for c in picked) + (f" (shadow {shadow[0]['version']})" if shadow else "")
    return {**described, "Version": versions, "Updated": exists}


def _check_libraries(row: dict[str, Any]) -> None:
    """What the gate's evaluator checks before it deploys, checked before `provision` deploys."""
    from pipelines.containers import locked_versions
    from pipelines.contract import library_mismatches

    reasons = library_mismatches(f"{row['name']} version {row['version']}", row["libraries"], locked_versions())
    if reasons:
        raise ProvisionError("not deployed: " + "; ".join(reasons))


def provision_local(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    version: str | None,
    weights: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Create or update the local endpoint for `version` (default: the champion, else the newest).

    It runs the gate's own deploy branches (`pipelines.gate.deploy_definition`: model, endpoint
    config, blue/green endpoint update, inference component, scale-to-zero policies and alarm,
    then the champion record) with the YAML's settings, so `provision` and the gate create the
    same resources. `weights` ({version: weight}) makes an A/B endpoint instead, and the YAML's
    `deployment.shadow` an endpoint with a shadow variant beside `version`.
    """
    from pipelines.contract import Resources, deployment_target
    from pipelines.local_gate import GateError, LocalGate, gate_input
    from pipelines.registry import VersionNotFound, find_version

    name = project.registered_model(config.name)
    if weights:
        try:
            picked = [find_version(home, name, v) for v in weights]
        except VersionNotFound as error:
            raise ProvisionError(f"model {config.name}: {error}") from None
        for row in picked:
            _check_libraries(row)
        return _provision_variants(config, project, home, picked, list(weights.values()))
    if config.deployment.shadow is not None:  # the version served, and the shadow beside it
        try:
            served = find_version(home, name, version, prefer_alias="champion")
            shadowed = find_version(home, name, str(config.deployment.shadow.version))
        except VersionNotFound as error:
            raise ProvisionError(f"model {config.name}: {error}") from None
        for row in (served, shadowed):
            _check_libraries(row)
        sampling = config.deployment.shadow.sampling_percentage / 100
        return _provision_variants(config, project, home, [served], [1.0], (shadowed, sampling))
    try:  # default: the champion, else the newest
        execution_input = gate_input(config, project, home, version, prefer_alias="champion")
    except GateError as error:
        raise ProvisionError(str(error)) from None
    _check_libraries(find_version(home, name, execution_input["version"]))
    digest = uuid.uuid4().hex[:8]
    target = deployment_target(Resources(**execution_input["resources"]), config.deployment.type, digest)
    decision = f"deploy_{config.deployment.type}"
    execution_input["evaluation"] = {"decision": decision, "reasons": ["provisioned"], "target": target}
    endpoint_name = target["endpoint_name"]
    existed = endpoint_name in EndpointManager(home, project).snapshot()["endpoints"]
    with LocalGate(project, home) as gate:
        record = gate.execute(execution_input, name=f"{config.name}-provision-{digest}", deploy_only=True)
    manager = EndpointManager(home, project)
    if endpoint_name not in manager.snapshot()["endpoints"]:  # failed before the endpoint was created
        raise ProvisionError(f"model {config.name}: deployment failed ({record.error}): {record.cause}")
    described = manager.call("describeEndpoint", {"EndpointName": endpoint_name})
    if config.deployment.type == "realtime" and target["inference_component_name"] in manager.snapshot().get(
        "inference_components", {}
    ):
        described["InferenceComponent"] = manager.call(
            "describeInferenceComponent", {"InferenceComponentName": target["inference_component_name"]}
        )
    if record.status != "SUCCEEDED":
        described["FailureReason"] = described.get("FailureReason") or f"{record.error}: {record.cause}"
    described["Version"] = execution_input["version"]
    described["Updated"] = existed
    described["Execution"] = record.name
    return described
