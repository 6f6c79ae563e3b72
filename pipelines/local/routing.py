"""Which model serves a request, decided the way SageMaker does from the endpoint's records.

Production variants by weight (or `TargetVariant`), inference components (or
`InferenceComponentName`; during a rolling update, the share of its current batch goes to the new
version); serverless variants carry their `MaxConcurrency`, realtime ones
their instance count (the model server's workers) and the scale-in cooldown of their
target-tracking policy. Errors are sagemaker-runtime's (`InvocationError`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from pipelines.local.capture import CaptureTarget, capture_target
from pipelines.local.rollout import current_share
from pipelines.local.shadow import ShadowRoute, shadow_route

DEFAULT_SCALE_IN_COOLDOWN = 300.0


class InvocationError(Exception):
    """An error sagemaker-runtime would return: HTTP status, error code, message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


@dataclass(frozen=True)
class Route:
    variant: str
    model: str
    max_concurrency: int | None  # serverless only
    workers: int
    cooldown: float
    capture: CaptureTarget | None  # the endpoint config's DataCaptureConfig, when it captures
    shadow: ShadowRoute | None = None  # the endpoint config's shadow variant, when it has one


def route(
    state: dict[str, Any], endpoint_name: str, target_variant: str | None, component: str | None, account: str
) -> Route:
    """The variant and model that serve this request, with their limits."""
    endpoint = state["endpoints"].get(endpoint_name)
    if endpoint is None or not endpoint.get("EndpointConfigName"):
        raise InvocationError(400, "ValidationError", f"Endpoint {endpoint_name} of account {account} not found.")
    config = state["endpoint_configs"][endpoint["EndpointConfigName"]]
    variants = config["ProductionVariants"]
    if target_variant:
        variants = [v for v in variants if v["VariantName"] == target_variant]
        if not variants:
            raise InvocationError(400, "ValidationError", f"Variant {target_variant} not found for {endpoint_name}.")
    components = {
        name: c
        for name, c in state["inference_components"].items()
        if c["EndpointName"] == endpoint_name and c.get("Specification")
    }
    if component:
        if component not in components:
            raise InvocationError(400, "ValidationError", f"Inference component {component} not found.")
        chosen = components[component]
        variant = next((v for v in variants if v["VariantName"] == chosen["VariantName"]), variants[0])
        model_name = _component_model(chosen)
    else:
        weights = [float(v.get("InitialVariantWeight", 1.0)) for v in variants]
        variant = random.choices(variants, weights=weights)[0] if len(variants) > 1 else variants[0]
        model_name = variant.get("ModelName")
        if model_name is None:  # scale-to-zero shape: the model is an inference component
            hosted = [c for c in components.values() if c["VariantName"] == variant["VariantName"]]
            if not hosted:
                raise InvocationError(
                    400, "ValidationError", f"Endpoint {endpoint_name} has no inference component to invoke."
                )
            model_name = _component_model(hosted[0])
    serverless = variant.get("ServerlessConfig")
    scaling = variant.get("ManagedInstanceScaling", {})
    return Route(
        variant=variant["VariantName"],
        model=model_name,
        max_concurrency=serverless["MaxConcurrency"] if serverless else None,
        workers=int(scaling.get("MaxInstanceCount", 1)) if not serverless else 1,
        cooldown=scale_in_cooldown(state, endpoint_name),
        capture=capture_target(config),
        shadow=shadow_route(config, float(variant.get("InitialVariantWeight", 1.0))),
    )


def _component_model(component: dict[str, Any]) -> str:
    """The component's model; during a rolling update, the new version for its batch's share of requests."""
    update = component.get("Rollout")
    if update and random.random() < current_share(update):
        return update["To"]
    return component["Specification"]["ModelName"]


def scale_in_cooldown(state: dict[str, Any], endpoint_name: str) -> float:
    """The scale-in cooldown of the endpoint's target-tracking policy (realtime, as registered by
    the gate or `provision`), else $SAGEGATE_SCALE_IN_COOLDOWN (serverless: AWS's idle release)."""
    components = {f"inference-component/{n}" for n, c in state["inference_components"].items()
                  if c["EndpointName"] == endpoint_name}  # fmt: skip
    for policy in state.get("scaling_policies", {}).values():
        config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
        if policy["ResourceId"] in components and "ScaleInCooldown" in config:
            return float(config["ScaleInCooldown"])
    return float(os.environ.get("SAGEGATE_SCALE_IN_COOLDOWN", DEFAULT_SCALE_IN_COOLDOWN))
