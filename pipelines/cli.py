"""`sagegate` command line: run the pipeline locally, inspect runs and models, print the definition."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from pipelines.config import ConfigError, ModelConfig, load_config
from pipelines.state import ENVIRONMENTS, Project, StateHome

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _quiet_sdk_logs() -> None:
    """The SDK, botocore and MLflow log at INFO by default; sagegate prints its own progress."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("sagemaker", "sagemaker.config", "botocore", "boto3", "mlflow", "alembic", "moto", "werkzeug"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _project(args: argparse.Namespace) -> Project:
    base = Project.from_env()
    return Project(
        prefix=args.project or base.prefix,
        environment=args.env or base.environment,
        region=args.region or base.region,
        account=base.account,
    )


def _config(args: argparse.Namespace) -> ModelConfig:
    return load_config(args.config, args.set)


def _print_progress(step: str, status: str, seconds: float | None) -> None:
    if status == "Executing":
        print(f"  … {step}", flush=True)
    else:
        mark = "✓" if status == "Succeeded" else "✗"
        print(f"  {mark} {step:<22} {status:<10} {seconds or 0:6.1f}s", flush=True)


def _gate_description(config: ModelConfig) -> str:
    parts = []
    for metric, threshold in config.quality_gate.metrics.items():
        if threshold.min is not None:
            parts.append(f"{metric} >= {threshold.min}")
        if threshold.max is not None:
            parts.append(f"{metric} <= {threshold.max}")
    return ", ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.local_run import run_local

    config = _config(args)
    if config.training.platform != "local":
        raise ConfigError(
            f"{args.config}: training.platform is {config.training.platform!r}; `sagegate run` executes the pipeline "
            "locally. On AWS, upsert `get-pipeline-definition` output and call start-pipeline-execution, or run "
            "locally with --set training.platform=local"
        )
    project = _project(args)
    home = StateHome.from_env()
    if not args.json:
        print(
            f"sagegate run: {config.name} ({config.task}) — pipeline {project.pipeline_name(config.name)}, local mode"
        )
    record = run_local(config, project, home, progress=None if args.json else _print_progress)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    else:
        print(f"\nResult: {record.status} in {record.duration_seconds:.1f}s (run {record.run_id})")
        if record.metrics:
            print("Metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in record.metrics.items()))
        if record.gate:
            print(f"Quality gate: {record.gate} ({_gate_description(config)})")
        if record.registered_version:
            print(
                f"Registered: {record.registered_model} version {record.registered_version} in MLflow "
                f"({home.mlflow_tracking_uri})"
            )
        if record.failure_reason:
            print(f"Reason: {record.failure_reason}")
            print("Nothing was registered.")
        for name, location in record.artifacts.items():
            print(f"  {name:<13} {location}")
    return EXIT_OK if record.status == "Succeeded" else EXIT_FAILED


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.local_run import list_records

    records = list_records(StateHome.from_env())
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return EXIT_OK
    if not records:
        print("no runs yet: try `sagegate run models/breast-cancer.yaml`")
        return EXIT_OK
    print(f"{'RUN':<14} {'STARTED':<26} {'MODEL':<16} {'STATUS':<10} {'GATE':<7} {'VERSION':<8} REASON")
    for r in records:
        reason = (r.failure_reason or "")[:70]
        print(
            f"{r.run_id:<14} {r.started_at:<26} {r.model:<16} {r.status:<10} {r.gate or '-':<7} "
            f"{r.registered_version or '-':<8} {reason}"
        )
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from pipelines.registry import list_versions

    versions = list_versions(StateHome.from_env())
    if args.json:
        print(json.dumps(versions, indent=2))
        return EXIT_OK
    if not versions:
        print("no registered models yet")
        return EXIT_OK
    print(f"{'MODEL':<36} {'VERSION':<8} {'CREATED':<20} {'RUN':<14} METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={float(x):.4f}" for k, x in sorted(v["metrics"].items()))
        print(f"{v['name']:<36} {v['version']:<8} {v['created']:<20} {v['execution_id']:<14} {metrics}")
    return EXIT_OK


def cmd_definition(args: argparse.Namespace) -> int:
    from pipelines.definition import definition_json

    print(definition_json(_config(args), _project(args), local=args.local))
    return EXIT_OK


def _add_common(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        parser.add_argument("config", help="model YAML, e.g. models/breast-cancer.yaml")
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="override a config field, e.g. model.hyperparameters.max_depth=8 (repeatable)",
        )
    parser.add_argument(
        "--env", choices=ENVIRONMENTS, help="environment (default $SAGEGATE_ENVIRONMENT or development)"
    )
    parser.add_argument("--project", help="resource name prefix (default $SAGEGATE_PROJECT or sagegate)")
    parser.add_argument("--region", help="AWS region (default $AWS_DEFAULT_REGION or us-east-1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagegate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the training pipeline locally on a model config")
    _add_common(run)
    run.add_argument("--json", action="store_true", help="print the run record as JSON")
    run.set_defaults(handler=cmd_run)

    runs = commands.add_parser("runs", help="list past local runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=cmd_runs)

    models = commands.add_parser("models", help="list registered model versions with their metrics")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=cmd_models)

    pipeline = commands.add_parser("pipeline", help="pipeline definition commands")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    definition = pipeline_commands.add_parser("definition", help="print the pipeline definition JSON (offline)")
    _add_common(definition)
    definition.add_argument("--local", action="store_true", help="the local-mode variant (no Model Registry step)")
    definition.set_defaults(handler=cmd_definition)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_sdk_logs()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def get_pipeline_definition(argv: list[str] | None = None) -> int:
    """SageMaker project-template entry point: `get-pipeline-definition -f definition.json MODEL_YAML`."""
    parser = argparse.ArgumentParser(prog="get-pipeline-definition", description=get_pipeline_definition.__doc__)
    _add_common(parser)
    parser.add_argument("-f", "--file-name", help="write the JSON here instead of stdout")
    _quiet_sdk_logs()
    args = parser.parse_args(argv)
    from pipelines.definition import definition_json

    try:
        text = definition_json(_config(args), _project(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.file_name:
        Path(args.file_name).write_text(text + "\n")
    else:
        print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
