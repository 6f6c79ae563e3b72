"""The gate's contract: deployment settings, thresholds and the execution input, one schema.

The model YAML validates `deployment` and `quality_gate` with these models, the gate input is
built from them, and the gate's Lambda handlers parse their events with them (deploy.sh ships
this module in each Lambda package), so a default or a limit exists exactly once. Only
pydantic is imported: the Lambdas carry nothing else of sagegate.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DIGEST = "{digest}"  # placeholder in per-deployment names, filled by whoever deploys


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _has_a_finite_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs min, max or both")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"threshold bounds must be finite numbers, got {bound}")
        return self


SECRET_ARN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$"
# environment names that carry credentials: their values belong in Secrets Manager, not in YAML
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)
HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


class LlmDeployment(_Strict):
    """An LLM from the Hugging Face Hub served with a LoRA adapter (AWS only): two inference
    components on one realtime endpoint, `{endpoint}-base` and `{endpoint}-adapter`."""

    base_model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
    adapter_s3_uri: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$")
    container_image: str = Field(
        pattern=r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[a-f0-9]{64})$"
    )
    environment: dict[str, str] = Field(default_factory=dict)
    hf_token_secret_arn: str | None = None
    memory_mb: int = Field(16384, ge=1024)
    accelerators: int = Field(1, ge=0)

    @field_validator("hf_token_secret_arn")
    @classmethod
    def _an_arn_not_a_token(cls, value: str | None) -> str | None:
        if value is None or re.match(SECRET_ARN, value):
            return value
        if HF_TOKEN.search(value) or not value.startswith("arn:"):
            raise ValueError("looks like a literal token: store it in Secrets Manager and give the secret's ARN")
        raise ValueError("not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)")

    @field_validator("environment")
    @classmethod
    def _no_secrets(cls, environment: dict[str, str]) -> dict[str, str]:
        for name, value in environment.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name == "HF_MODEL_ID":
                raise ValueError("HF_MODEL_ID comes from deployment.llm.base_model")
            if SECRET_NAMES.search(name) or HF_TOKEN.search(value):
                raise ValueError(
                    f"{name}: a secret in YAML; store it in Secrets Manager (the Hugging Face token: "
                    "deployment.llm.hf_token_secret_arn)"
                )
        return environment


class DataCapture(_Strict):
    """What a realtime endpoint captures (SageMaker's DataCaptureConfig): a sampled share of requests
    and responses, written as JSON lines under `{destination}/{endpoint}/{variant}/yyyy/mm/dd/hh/`."""

    enabled: bool = False
    sampling_percentage: int = Field(100, ge=0, le=100)
    destination_s3_uri: str = Field("", pattern=r"^(s3://[^/]+/.+)?$")


class RollbackAlarms(_Strict):
    """The alarms a rollout watches on the new version's traffic; either one in alarm rolls it back."""

    error_rate: float = Field(0.01, gt=0, le=1)  # (4XX + 5XX) / invocations
    p99_latency_ms: float = Field(500, gt=0)


class Rollout(_Strict):
    """How a new version replaces the serving one on a realtime endpoint: SageMaker's rolling update of
    the inference component (the model lives there), in batches of capacity, each baked `wait_seconds`
    while the rollback alarms watch it; an alarm rolls every batch back to the serving version.
    `canary` moves `canary_percent` per batch (5-50%, the API's bounds), `linear` `linear_step_percent`
    (10-50%); `all_at_once` moves everything when the new version is InService."""

    type: Literal["all_at_once", "canary", "linear"] = "all_at_once"
    canary_percent: int = Field(10, ge=5, le=50)
    linear_step_percent: int = Field(25, ge=10, le=50)
    wait_seconds: int = Field(300, ge=0, le=3600)  # WaitIntervalInSeconds
    max_execution_seconds: int = Field(3600, ge=600, le=28800)  # MaximumExecutionTimeoutInSeconds
    rollback_on: RollbackAlarms = RollbackAlarms()

    @model_validator(mode="before")
    @classmethod
    def _no_termination_wait(cls, data: Any) -> Any:
        if isinstance(data, dict) and "termination_wait_seconds" in data:
            raise ValueError(
                "termination_wait_seconds: an inference component's rolling update terminates the old copies "
                "batch by batch, so there is no termination wait to set (remove it)"
            )
        return data

    @property
    def batch_percent(self) -> int:
        return self.canary_percent if self.type == "canary" else self.linear_step_percent

    @property
    def batches(self) -> int:
        return 1 if self.type == "all_at_once" else math.ceil(100 / self.batch_percent)

    @model_validator(mode="after")
    def _time_for_every_batch(self) -> Rollout:
        baking = self.batches * self.wait_seconds
        if self.type != "all_at_once" and baking >= self.max_execution_seconds:
            raise ValueError(
                f"max_execution_seconds ({self.max_execution_seconds}) must exceed the bake time of all "
                f"{self.batches} batches ({self.batches} × wait_seconds {self.wait_seconds} = {baking} s)"
            )
        return self


class Variant(_Strict):
    """One side of an A/B endpoint: a registered version and its share of the traffic (by weight)."""

    version: int = Field(ge=1)
    weight: float = Field(gt=0)


class Shadow(_Strict):
    """A shadow test (`provision endpoint`): beside the version served, `version` gets a copy of
    `sampling_percentage` of the requests; callers only ever get the production answer."""

    version: int | Literal["champion"]
    sampling_percentage: int = Field(50, ge=1, le=100)


class DeploymentConfig(_Strict):
    """Where and how a model is served: the YAML's `deployment`, the gate's and the endpoints'."""

    type: Literal["serverless", "realtime"] = "serverless"
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(1, ge=1)
    scale_in_cooldown: int = Field(300, ge=0)
    scale_out_cooldown: int = Field(60, ge=0)
    target_invocations_per_instance: float = Field(1.0, gt=0)
    memory_size_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] = 2048
    max_concurrency: int = Field(5, ge=1, le=200)
    champion_tolerance: float = Field(0.01, ge=0)
    rollout: Rollout = Rollout()
    # an A/B endpoint (`provision endpoint`): two versions, one production variant each; the gate deploys one
    variants: list[Variant] | None = None
    shadow: Shadow | None = None
    llm: LlmDeployment | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> DeploymentConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) > max_instances ({self.max_instances})")
        return self

    @model_validator(mode="after")
    def _two_distinct_variants(self) -> DeploymentConfig:
        if self.variants is None:
            return self
        versions = [variant.version for variant in self.variants]
        if len(versions) != 2 or len(set(versions)) != 2:
            raise ValueError(f"variants: an A/B endpoint has two different versions (got {versions})")
        if self.rollout.type != "all_at_once":
            raise ValueError(
                "variants: a rolling update moves one inference component's model; an A/B endpoint's variants "
                "are replaced all at once (rollout.type: all_at_once)"
            )
        return self

    @model_validator(mode="after")
    def _shadow_beside_one_realtime_variant(self) -> DeploymentConfig:
        if self.shadow is None:
            return self
        if self.type != "realtime":
            raise ValueError("shadow: SageMaker runs shadow variants on instances (type: realtime), not serverless")
        if self.variants is not None:
            raise ValueError("shadow: an endpoint with a shadow variant has one production variant (drop variants)")
        return self

    @model_validator(mode="after")
    def _rollout_is_realtime(self) -> DeploymentConfig:
        if self.rollout.type != "all_at_once" and self.type != "realtime":
            raise ValueError(
                f"rollout.type {self.rollout.type} needs type: realtime (a serverless endpoint supports neither "
                "rolling updates nor traffic shifting: SageMaker replaces it all at once)"
            )
        return self

    @model_validator(mode="after")
    def _llm_is_realtime(self) -> DeploymentConfig:
        if self.llm is not None and self.type != "realtime":
            raise ValueError("deployment.llm needs type: realtime (inference components on instances)")
        return self


class Resources(_Strict):
    """The names a deployment uses (built by `pipelines.state.Project`); `{digest}` marks the parts
    that are new for every deployment (model, endpoint config), so every deployment is blue/green."""

    endpoint_name: str = Field(min_length=1, max_length=63)
    model_name: str = Field(pattern=r"\{digest\}")
    endpoint_config_name: str = Field(pattern=r"\{digest\}")
    inference_component_name: str = Field(min_length=1, max_length=63)
    champion_artifact_uri: str = Field(pattern=r"^s3://[^/]+/.+")


class GateInput(_Strict):
    """The execution input: one registered model version and the settings from its model YAML."""

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    task: Literal["classification", "regression"]
    registered_model: str = Field(min_length=1)
    version: str = Field(pattern=r"^[1-9][0-9]*$")
    model_package_arn: str | None = None
    evaluation_uri: str = Field(pattern=r"^s3://[^/]+/.+")
    container: dict[str, Any]
    quality_gate: dict[str, Threshold]
    deployment: DeploymentConfig
    resources: Resources
    # the serving image's packages (containers/requirements.lock): a model is deployed only onto the
    # library versions it was trained with
    runtime_libraries: dict[str, str] = Field(min_length=1)
    data_capture: DataCapture = DataCapture()
    poll_seconds: int = Field(ge=0, le=3600)


def library_mismatches(label: str, trained_with: dict[str, str], serving: dict[str, str]) -> list[str]:
    """Why `label` (a registered version) may not be served on an image with the `serving` packages:
    a pickled scikit-learn model may not load, or may predict differently, on other versions.
    Unrecorded versions fail closed. The gate's evaluator and `provision endpoint` both ask this."""
    if not trained_with:
        return [f"{label} records no library versions (library.* tags): cannot show it loads on the serving image"]
    return [
        f"{label} was trained with {library} {version}, the serving image has {library} "
        f"{serving.get(library) or '(not installed)'}"
        for library, version in sorted(trained_with.items())
        if serving.get(library) != version
    ]


NAME_LIMIT = 63  # SageMaker model, endpoint, endpoint-config and inference-component names


def deployment_target(resources: Resources, deployment_type: str, digest: str) -> dict[str, Any]:
    """The names one deployment uses: what the gate's deploy branches read from `$.evaluation.target`."""
    target = {
        "deployment_type": deployment_type,
        "endpoint_name": resources.endpoint_name,
        "model_name": resources.model_name.replace(DIGEST, digest),
        "endpoint_config_name": resources.endpoint_config_name.replace(DIGEST, digest),
        "inference_component_name": resources.inference_component_name,
        "scalable_resource_id": f"inference-component/{resources.inference_component_name}",
        "scaling_policy_prefix": resources.inference_component_name,
    }
    too_long = [name for key, name in target.items() if key.endswith("_name") and len(name) > NAME_LIMIT]
    if too_long:
        raise ValueError(f"resource names longer than {NAME_LIMIT} characters: {', '.join(too_long)}")
    return target
