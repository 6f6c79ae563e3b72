"""CloudFormation templates rendered for one environment: conditions resolved, as AWS would.

The templates in `cloudformation/` use Conditions and `Fn::If` (with AWS::LanguageExtensions for
DeletionPolicy). Rendering resolves those for a given set of parameters so that tests, the
security scanners and moto see exactly what one environment gets; every other intrinsic
function is left for CloudFormation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.containers import template_path

NO_VALUE = object()


class TemplateError(ValueError):
    """A template could not be rendered (unknown parameter, unresolvable condition)."""


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (`!Ref x`, `!GetAtt a.b`, `!Sub ...`) as long forms."""


def _intrinsic(loader: _Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _intrinsic)


def load(name: str) -> dict[str, Any]:
    path = template_path(name)
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, yaml.YAMLError) as error:
        raise TemplateError(f"{path}: {error}") from error


def _parameter(template: dict[str, Any], parameters: dict[str, str], name: str) -> Any:
    if name in parameters:
        return parameters[name]
    declared = template.get("Parameters", {}).get(name)
    if declared is None or "Default" not in declared:
        raise TemplateError(f"parameter {name} has no value and no default")
    return declared["Default"]


def _condition(template: dict[str, Any], parameters: dict[str, str], expression: Any) -> bool:
    if isinstance(expression, dict) and len(expression) == 1:
        ((function, arguments),) = expression.items()
        if function == "Condition":
            return _condition(template, parameters, template["Conditions"][arguments])
        if function == "Fn::Equals":
            left, right = (_value(template, parameters, a) for a in arguments)
            return str(left) == str(right)
        if function == "Fn::Not":
            return not _condition(template, parameters, arguments[0])
        if function == "Fn::And":
            return all(_condition(template, parameters, a) for a in arguments)
        if function == "Fn::Or":
            return any(_condition(template, parameters, a) for a in arguments)
    raise TemplateError(f"cannot evaluate condition {expression!r}")


def _value(template: dict[str, Any], parameters: dict[str, str], value: Any) -> Any:
    if isinstance(value, dict) and list(value) == ["Ref"] and value["Ref"] in template.get("Parameters", {}):
        return _parameter(template, parameters, value["Ref"])
    if isinstance(value, dict) and "Condition" in value and len(value) == 1:
        return _condition(template, parameters, value)
    return value


def _resolve(template: dict[str, Any], parameters: dict[str, str], node: Any) -> Any:
    if isinstance(node, dict):
        if list(node) == ["Fn::If"]:
            name, when_true, when_false = node["Fn::If"]
            chosen = when_true if _condition(template, parameters, {"Condition": name}) else when_false
            return _resolve(template, parameters, chosen)
        if node == {"Ref": "AWS::NoValue"}:
            return NO_VALUE
        resolved = {key: _resolve(template, parameters, item) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}
    if isinstance(node, list):
        return [item for item in (_resolve(template, parameters, i) for i in node) if item is not NO_VALUE]
    return node


def _kept(template: dict[str, Any], parameters: dict[str, str], entries: dict[str, Any]) -> dict[str, Any]:
    """Resources or outputs whose Condition holds, with Fn::If resolved."""
    kept = {}
    for key, entry in entries.items():
        condition = entry.pop("Condition", None)
        if condition is None or _condition(template, parameters, {"Condition": condition}):
            kept[key] = _resolve(template, parameters, entry)
    return kept


def render(name: str, parameters: dict[str, str]) -> dict[str, Any]:
    """The template as deployed with `parameters`: conditional resources dropped, Fn::If chosen."""
    return render_template(load(name), parameters, name)


def render_template(template: dict[str, Any], parameters: dict[str, str], name: str = "template") -> dict[str, Any]:
    """`render` for a loaded (possibly specialised) template."""
    declared = template.get("Parameters", {})
    unknown = set(parameters) - set(declared)
    if unknown:
        raise TemplateError(f"{name}: unknown parameters {', '.join(sorted(unknown))}")
    rendered = {key: value for key, value in template.items() if key not in ("Transform", "Resources", "Conditions")}
    rendered["Resources"] = _kept(template, parameters, template["Resources"])
    outputs = _kept(template, parameters, template.get("Outputs", {}))
    if outputs:
        rendered["Outputs"] = outputs
    rendered["Parameters"] = {  # the values used become the defaults, so scanners resolve them too
        key: {**spec, "Default": str(_parameter(template, parameters, key))}
        if key in parameters or "Default" in spec
        else spec
        for key, spec in declared.items()
    }
    return rendered


EXAMPLE_PARAMETERS: dict[str, dict[str, str]] = {
    "training-bucket.yaml": {},
    "iam-roles.yaml": {},
    "images.yaml": {"ImageTag": "0123456789abcdef", "ContextKey": "images/runtime-0123456789abcdef.zip"},
    "gate.yaml": {
        "EvaluatorCodeKey": "lambdas/evaluator-0123abcd.zip",
        "PromoterCodeKey": "lambdas/promoter-0123abcd.zip",
        "DefinitionKey": "gate/deployment-gate-0123abcd.asl.json",
        "MlflowTrackingServerArn": "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/sagegate",
    },
    "model.yaml": {
        "ModelName": "breast-cancer",
        "PipelineDefinitionKey": "pipelines/breast-cancer/definition-0123abcd.json",
        "InferencePipelineDefinitionKey": "pipelines/breast-cancer/inference-0123abcd.json",
        "MonitoringPipelineDefinitionKey": "pipelines/breast-cancer/monitoring-0123abcd.json",
        "GateSettings": '"task": "classification", "quality_gate": {"accuracy": {"min": 0.85}}, '
        '"deployment": {"type": "serverless"}',
    },
    "endpoint-serverless.yaml": {
        "ModelName": "breast-cancer",
        "ModelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-breast-cancer/1",  # noqa: E501
        "DeploymentHash": "0123abcd",
    },
    "endpoint-llm.yaml": {
        "ModelName": "assistant",
        "BaseModel": "meta-llama/Llama-3.1-8B-Instruct",
        "AdapterS3Uri": "s3://sagegate-development-training/adapters/assistant/adapter.tar.gz",
        "ContainerImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4.0-tgi2.4.0-gpu-py311-cu124-ubuntu22.04",  # noqa: E501
        "HfTokenSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:sagegate/hf-token-AbCdEf",
    },
    "endpoint-ab.yaml": {
        "ModelName": "friedman1",
        "DeploymentHash": "0123abcd",
        "DeploymentType": "realtime",
        "VariantAVersion": "3",
        "VariantAPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/3",
        "VariantAWeight": "0.8",
        "VariantBVersion": "4",
        "VariantBPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/4",
        "VariantBWeight": "0.2",
    },
    "endpoint-realtime.yaml": {
        "ModelName": "friedman1",
        "ModelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/1",
        "DeploymentHash": "0123abcd",
        "DataCaptureDestination": "s3://sagegate-development-training/monitoring/capture",
    },
}


def render_all(out: Path) -> list[Path]:
    """Every template for every environment (example per-model parameters) — what the scanners read."""
    import json

    from pipelines.state import ENVIRONMENTS

    written = []
    for environment in ENVIRONMENTS:
        for name, parameters in EXAMPLE_PARAMETERS.items():
            rendered = render(name, {"Environment": environment, **parameters})
            path = out / environment / name.replace(".yaml", ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rendered, indent=2))
            written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for written_path in render_all(Path(sys.argv[1] if len(sys.argv) > 1 else "build/cloudformation")):
        print(written_path)
