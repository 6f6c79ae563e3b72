"""What `scripts/deploy.sh` does for one environment, as data: artifacts to upload, stacks in order.

The plan is built offline (definitions are exported under moto, artifact keys are content
hashes) and written as `commands.sh` — one `run`/`upload`/`package_lambda` line per step,
quoted by Python — which deploy.sh executes or, with --dry-run, prints. Content-addressed keys
and `cloudformation deploy --no-fail-on-empty-changeset` make a second deploy change nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ModelConfig, load_config
from pipelines.containers import IMAGE_FILES, asset_folder, content_digest, image_tag
from pipelines.lambda_package import package_digest
from pipelines.state import ENVIRONMENTS, Project


@dataclass
class Stack:
    name: str
    template: str
    parameters: dict[str, str]
    capabilities: tuple[str, ...] = ()

    def deploy_command(self, region: str) -> list[str]:
        command = [
            "aws", "cloudformation", "deploy",
            "--region", region,
            "--stack-name", self.name,
            "--template-file", f"cloudformation/{self.template}",
            "--no-fail-on-empty-changeset",
            "--parameter-overrides", *(f"{key}={value}" for key, value in self.parameters.items()),
        ]  # fmt: skip
        if self.capabilities:
            command += ["--capabilities", *self.capabilities]
        return command


@dataclass
class Plan:
    project: Project
    out: Path
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    lambdas: list[tuple[str, Path, str]] = field(default_factory=list)
    stacks: list[Stack] = field(default_factory=list)
    image_context: tuple[Path, str] = (Path(), "")  # the runtime image's zipped build context and its key

    def commands(self) -> list[list[str]]:
        region, bucket = self.project.region, self.project.bucket
        lines: list[list[str]] = []
        for stack in self.stacks[:2]:  # bucket and roles first: everything else lives in or uses them
            lines.append(["run", *stack.deploy_command(region)])
        archive, key = self.image_context  # then the runtime image, before anything that runs on it
        lines.append(["upload", str(archive), f"s3://{bucket}/{key}"])
        lines.append(["run", *self.stacks[2].deploy_command(region)])
        lines.append(["build_image", self.project.image_build_project, self.project.image_repository, image_tag()])
        for kind, archive, key in self.lambdas:
            lines.append(["package_lambda", kind, str(archive), f"s3://{bucket}/{key}"])
        for path, key in self.uploads:
            lines.append(["upload", str(path), f"s3://{bucket}/{key}"])
        for stack in self.stacks[3:]:
            lines.append(["run", *stack.deploy_command(region)])
        for stack in self.stacks:
            lines.append(["outputs", region, stack.name])
        return lines


def _digest(path: Path) -> str:
    return content_digest({path.name: path}, 12)


def _write_bytes(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def zip_image_context(out: Path) -> Path:
    """The runtime image's build context as a zip (fixed timestamps: the same content, the same bytes)."""
    path = out / "images" / f"runtime-{image_tag()}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in IMAGE_FILES:
            source = asset_folder("containers") / name
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            archive.writestr(info, source.read_bytes(), zipfile.ZIP_DEFLATED)
    return path


def gate_settings(config: ModelConfig, project: Project) -> str:
    """The model's part of the gate input, as JSON members for the registration rule's template."""
    from pipelines.gate import model_settings

    return json.dumps(model_settings(config, project), separators=(",", ":"), sort_keys=True)[1:-1]


def build_plan(project: Project, out: Path, configs: list[ModelConfig], mlflow_arn: str) -> Plan:
    from pipelines.definition import export_definition
    from pipelines.gate import GATE_FUNCTIONS, gate_definition_json

    plan = Plan(project=project, out=out)
    base = {"Project": project.prefix, "Environment": project.environment}
    named = {**base, "GlobalNameSuffix": project.global_suffix}  # templates that name global resources
    plan.stacks.append(Stack(project.stack_name("training-bucket"), "training-bucket.yaml", named))
    plan.stacks.append(Stack(project.stack_name("iam-roles"), "iam-roles.yaml", named, ("CAPABILITY_NAMED_IAM",)))
    context_key = f"images/runtime-{image_tag()}.zip"
    plan.image_context = (zip_image_context(out), context_key)
    images = {**named, "ImageTag": image_tag(), "ContextKey": context_key}
    plan.stacks.append(Stack(project.stack_name("images"), "images.yaml", images, ("CAPABILITY_NAMED_IAM",)))
    code_keys = {}
    for kind in GATE_FUNCTIONS:
        key = f"lambdas/{kind}-{package_digest(kind)}.zip"
        plan.lambdas.append((kind, out / "lambdas" / f"{kind}.zip", key))
        code_keys[kind] = key
    asl = _write(out / "gate.asl.json", gate_definition_json() + "\n")
    definition_key = f"gate/deployment-gate-{_digest(asl)}.asl.json"
    plan.uploads.append((asl, definition_key))
    plan.stacks.append(
        Stack(
            project.stack_name("gate"),
            "gate.yaml",
            {
                **named,
                "EvaluatorCodeKey": code_keys["evaluator"],
                "PromoterCodeKey": code_keys["promoter"],
                "DefinitionKey": definition_key,
                "MlflowTrackingServerArn": mlflow_arn,
            },
        )
    )
    for config in configs:
        training, batch = export_definition(config, project), export_definition(config, project, kind="inference")
        definition = _write(out / "pipelines" / f"{config.name}.json", training.json + "\n")
        definition_key = f"pipelines/{config.name}/definition-{_digest(definition)}.json"
        plan.uploads.append((definition, definition_key))
        inference = _write(out / "pipelines" / f"{config.name}-inference.json", batch.json + "\n")
        inference_key = f"pipelines/{config.name}/inference-{_digest(inference)}.json"
        plan.uploads.append((inference, inference_key))
        monitoring_key = ""
        code = {**training.code, **batch.code}
        if config.captures():  # the endpoint captures traffic: the drift monitor and its schedule
            drift = export_definition(config, project, kind="monitoring")
            monitoring = _write(out / "pipelines" / f"{config.name}-monitoring.json", drift.json + "\n")
            monitoring_key = f"pipelines/{config.name}/monitoring-{_digest(monitoring)}.json"
            plan.uploads.append((monitoring, monitoring_key))
            code.update(drift.code)
        for key, body in sorted(code.items()):  # the step code the definitions reference
            plan.uploads.append((_write_bytes(out / "code" / key, body), key))
        for source, key in config.data_inputs().values():  # the data the weekly run trains on
            if Path(source).is_file():
                plan.uploads.append((Path(source), key))
        plan.stacks.append(
            Stack(
                project.stack_name(config.name),
                "model.yaml",
                {
                    **base,
                    "ModelName": config.name,
                    "PipelineDefinitionKey": definition_key,
                    "InferencePipelineDefinitionKey": inference_key,
                    "MonitoringPipelineDefinitionKey": monitoring_key,
                    "MonitoringSchedule": config.monitoring.schedule if config.monitoring else "rate(1 hour)",
                    "GateSettings": gate_settings(config, project),
                },
            )
        )
    return plan


def write_commands(plan: Plan) -> Path:
    lines = ["# generated by `python -m pipelines.deploy_plan`; sourced by scripts/deploy.sh"]
    lines += [" ".join(shlex.quote(part) for part in command) for command in plan.commands()]
    return _write(plan.out / "commands.sh", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.deploy_plan", description=__doc__)
    parser.add_argument("environment", choices=ENVIRONMENTS)
    parser.add_argument("--project", default="sagegate")
    parser.add_argument("--region", required=True)
    parser.add_argument("--account", default="123456789012")
    parser.add_argument("--primary-region", help="the region whose bucket and role names carry no region suffix")
    parser.add_argument("--mlflow-tracking-server-arn", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", type=Path, default=asset_folder("models"))
    args = parser.parse_args(argv)
    from pipelines.logs import quiet_sdk_logs

    quiet_sdk_logs()
    project = Project(args.project, args.environment, args.region, args.account, args.primary_region)
    configs = [load_config(path) for path in sorted(args.models.glob("*.yaml"))]
    plan = build_plan(project, args.out, configs, args.mlflow_tracking_server_arn)
    write_commands(plan)
    for stack in plan.stacks:
        print(f"stack {stack.name} ({stack.template})")
        for key, value in stack.parameters.items():
            print(f"    {key} = {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
