"""`sagegate` command line: run the pipeline locally, inspect runs and models, print the definition."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, ModelConfig, load_config
from pipelines.logs import quiet_sdk_logs
from pipelines.state import ENVIRONMENTS, Project, StateHome
from pipelines.statefiles import StateFileError, read_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    if not args.json:
        _print_run(record, config, home)
    execution = None
    if record.status == "Succeeded" and record.registered_version:
        from pipelines.local_gate import run_gate

        execution = run_gate(config, project, home, record.registered_version)
        if not args.json:
            _print_verdict(execution)
    if args.json:
        brief = None
        if execution:
            brief = {k: v for k, v in execution.to_json().items() if k not in ("events", "definition", "input")}
        print(json.dumps({**record.to_json(), "deployment": brief}, indent=2))
    return EXIT_OK if execution and execution.status == "SUCCEEDED" else EXIT_FAILED


def _print_run(record: Any, config: ModelConfig, home: StateHome) -> None:
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


def _print_verdict(execution: Any) -> None:
    print(f"\nDeployment gate: {execution.verdict} (execution {execution.name}, {execution.duration_seconds:.1f}s)")
    for reason in execution.reasons:
        print(f"  - {reason}")
    if execution.status != "SUCCEEDED":
        if execution.error not in ("Sagegate.Rejected", "Sagegate.EvaluationFailed"):
            print(f"  cause: {execution.cause}")
        print("Nothing was deployed; the endpoint (if any) keeps serving its previous version.")
    print(f"  history: sagegate executions show {execution.name}")


def _find_config(model: str, config_path: str | None, overrides: list[str]) -> ModelConfig:
    """`--model NAME` finds the YAML in ./models whose `name` is NAME (or `--config PATH`)."""
    if config_path:
        return load_config(config_path, overrides)
    from pipelines.containers import asset_folder

    # the project's models, then the bundled examples (once, when they are the same folder)
    folders = list(dict.fromkeys([Path("models").resolve(), asset_folder("models")]))
    for folder in folders:
        for path in sorted(folder.glob("*.y*ml")):
            try:
                config = load_config(path, overrides)
            except ConfigError:
                continue
            if config.name == model:
                return config
    searched = " or ".join(str(folder) for folder in folders)
    raise ConfigError(f"--model {model}: no model YAML named {model!r} in {searched} (or pass --config PATH)")


def cmd_gate_run(args: argparse.Namespace) -> int:
    from pipelines.local_gate import run_gate

    config = _find_config(args.model, args.config, args.set)
    execution = run_gate(config, _project(args), StateHome.from_env(), args.version)
    if args.json:
        print(json.dumps(execution.to_json(), indent=2))
    else:
        _print_verdict(execution)
    return EXIT_OK if execution.status == "SUCCEEDED" else EXIT_FAILED


def _ab_weights(text: str) -> dict[str, float]:
    """`--ab 3=0.8,4=0.2` → {"3": 0.8, "4": 0.2}: two or more versions with positive weights."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        version, _, weight = part.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not version.strip().isdigit() or value <= 0:
            raise ConfigError(f"--ab {text!r}: expected VERSION=WEIGHT pairs with positive weights, e.g. 3=0.8,4=0.2")
        weights[version.strip()] = value
    if len(weights) < 2:
        raise ConfigError(f"--ab {text!r}: an A/B endpoint needs at least two versions")
    return weights


def cmd_provision_endpoint(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    from pipelines.provision import aws_deploy_command, provision_local, template_parameters, with_overrides
    from pipelines.templates import render

    config = with_overrides(_find_config(args.model, args.config, args.set), vars(args))
    project = _project(args)
    target = args.target or ("local" if config.training.deployment_target == "local" else "aws")
    weights = _ab_weights(args.ab) if args.ab else None
    if target == "local":
        described = provision_local(config, project, StateHome.from_env(), args.version, weights)
        if args.json:
            print(json.dumps(described, indent=2))
        else:
            verb = "updated" if described["Updated"] else "created"
            print(
                f"local endpoint {described['EndpointName']} {verb}: {described['EndpointStatus']} "
                f"(version {described['Version']}, config {described['EndpointConfigName']})"
            )
            if described.get("FailureReason"):
                print(f"  reason: {described['FailureReason']}")
        return (
            EXIT_OK
            if described["EndpointStatus"] == "InService" and not described.get("FailureReason")
            else EXIT_FAILED
        )
    if weights:
        raise ConfigError("--ab is local only; on AWS add the variants to the endpoint stack")
    if not args.model_package_arn:
        raise ConfigError("--target aws needs --model-package-arn (the approved Model Registry version to serve)")
    template, parameters = template_parameters(config, project, args.model_package_arn)
    if args.render:
        Path(args.render).write_text(json.dumps(render(template, parameters), indent=2) + "\n")
    command = aws_deploy_command(config, project, args.model_package_arn)
    print("+ " + shlex.join(command))
    if args.dry_run:
        return EXIT_OK
    return subprocess.run(command, check=False).returncode


def cmd_gateway(args: argparse.Namespace) -> int:
    from pipelines.local.gateway import running_gateway, serve, start_gateway, stop_gateway

    home = StateHome.from_env().ensure()
    if args.gateway_command == "start":
        if args.foreground:
            serve(args.port or 8080)
            return EXIT_OK
        info = start_gateway(home, _project(args), args.port)
        print(f"local sagemaker-runtime at {info['url']} (pid {info['pid']})")
        print(f"  boto3.client('sagemaker-runtime', endpoint_url='{info['url']}')")
    elif args.gateway_command == "stop":
        print("stopped" if stop_gateway(home) else "no gateway running")
    else:
        info = running_gateway(home)
        print(f"running at {info['url']} (pid {info['pid']})" if info else "not running")
    return EXIT_OK


def cmd_endpoints(args: argparse.Namespace) -> int:
    from pipelines.local.endpoints import EndpointManager
    from pipelines.local.gateway import running_gateway

    home = StateHome.from_env()
    manager = EndpointManager(home, _project(args))
    state = manager.snapshot()
    metrics_path = home.root / "serving" / "metrics.json"
    try:
        metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    except StateFileError as error:
        _report_skipped([f"{error} (no invocation counts shown)"])
        metrics = {}
    command = getattr(args, "endpoints_command", None)
    if command == "delete":
        manager.call("deleteEndpoint", {"EndpointName": args.name})
        print(f"deleted {args.name}")
        return EXIT_OK
    if command == "show":
        if args.name not in state["endpoints"]:
            raise ValueError(f"no local endpoint {args.name!r} (see `sagegate endpoints`)")
        described = manager.call("describeEndpoint", {"EndpointName": args.name})
        config = state["endpoint_configs"].get(described["EndpointConfigName"], {})
        components = {n: c for n, c in state["inference_components"].items() if c["EndpointName"] == args.name}
        counts = metrics.get("invocations", {}).get(args.name, {})
        detail = {
            **described,
            "ProductionVariants": [
                {**variant, "Invocations": counts.get(variant["VariantName"], 0)}
                for variant in config.get("ProductionVariants", [])
            ],
            "InferenceComponents": components,
            "Throttled": metrics.get("throttled", {}).get(args.name, 0),
            "ModelServers": {
                name: server
                for name, server in metrics.get("servers", {}).items()
                if any(name == v.get("ModelName") for v in config.get("ProductionVariants", []))
                or any(name == (c.get("Specification") or {}).get("ModelName") for c in components.values())
            },
        }
        print(json.dumps(detail, indent=2, default=str))
        return EXIT_OK
    rows = [manager.call("describeEndpoint", {"EndpointName": name}) for name in sorted(state["endpoints"])]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    gateway = running_gateway(home)
    print(f"gateway: {gateway['url'] if gateway else 'not running (`sagegate gateway start`)'}")
    if not rows:
        print("no local endpoints yet: `sagegate run` deploys one when the gate passes")
    for row in rows:
        total = sum(metrics.get("invocations", {}).get(row["EndpointName"], {}).values())
        print(
            f"{row['EndpointName']:<48} {row['EndpointStatus']:<10} {row['EndpointConfigName']:<52} {total} invocations"
        )
    return EXIT_OK


def cmd_invoke(args: argparse.Namespace) -> int:
    import boto3

    from pipelines.local.gateway import start_gateway

    home = StateHome.from_env().ensure()
    project = _project(args)
    info = start_gateway(home, project)
    body = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=info["url"],
        region_name=project.region,
        aws_access_key_id="sagegate-local",
        aws_secret_access_key="sagegate-local",
    )
    request = {"EndpointName": args.name, "ContentType": args.content_type, "Accept": args.accept, "Body": body}
    if args.variant:
        request["TargetVariant"] = args.variant
    if args.probabilities:
        request["CustomAttributes"] = "probabilities=true"
    try:
        response = runtime.invoke_endpoint(**request)
    except runtime.exceptions.ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(response["Body"].read().decode())
    if not args.accept.startswith("text/csv"):
        sys.stdout.write("\n")
    print(f"(variant {response.get('InvokedProductionVariant')})", file=sys.stderr)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from pipelines.batch import predict

    result = predict(
        StateHome.from_env(), _project(args), args.model, args.input, args.output, chunk_rows=args.chunk_rows
    )
    print(result["log"])
    print(f"model {result['model']} version {result['version']} → {result['output']}")
    return EXIT_OK


def cmd_gate_definition(args: argparse.Namespace) -> int:
    from pipelines.gate import gate_definition_json

    print(gate_definition_json())
    return EXIT_OK


def cmd_executions(args: argparse.Namespace) -> int:
    from pipelines.local_gate import list_executions

    records, problems = list_executions(StateHome.from_env())
    _report_skipped(problems)
    if args.json:
        print(
            json.dumps([{k: v for k, v in r.to_json().items() if k not in ("events", "definition")} for r in records])
        )
        return EXIT_OK
    if not records:
        print("no gate executions yet: `sagegate run` runs the gate after the pipeline")
        return EXIT_OK
    print(f"{'EXECUTION':<34} {'STARTED':<33} {'STATUS':<10} {'DECISION':<18} VERDICT")
    for r in records:
        print(f"{r.name:<34} {r.started_at:<33} {r.status:<10} {r.decision or '-':<18} {r.verdict}")
    return EXIT_OK


def cmd_execution_show(args: argparse.Namespace) -> int:
    from pipelines.execution_view import render_graph, state_rows
    from pipelines.local_gate import load_execution

    record = load_execution(StateHome.from_env(), args.execution)
    rows = state_rows(record)
    if args.graph:
        render_graph(record, Path(args.graph))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"Execution {record.name}: {record.status} — {record.verdict}")
    print(f"  started {record.started_at}, {record.duration_seconds:.2f}s; state machine {record.state_machine}")
    for reason in record.reasons:
        print(f"  - {reason}")
    print()
    print(f"{'#':>3} {'STATE':<32} {'TYPE':<8} {'STATUS':<10} {'SECONDS':>8}  DETAIL")
    for index, row in enumerate(rows, 1):
        detail = f"{row['error']}: {(row['cause'] or '')[:90]}" if row["error"] else ""
        seconds = f"{row['duration_seconds']:.3f}" if row["duration_seconds"] is not None else "-"
        print(f"{index:>3} {row['state']:<32} {row['type']:<8} {row['status']:<10} {seconds:>8}  {detail}")
        if args.verbose:
            print(f"      input:  {json.dumps(row['input'])[:400]}")
            print(f"      output: {json.dumps(row['output'])[:400]}")
    if args.graph:
        print(f"\ngraph: {args.graph}")
    return EXIT_OK


def _report_skipped(problems: list[str]) -> None:
    """Listings show every readable record and name each one they had to skip."""
    for problem in problems:
        print(f"warning: skipped {problem}", file=sys.stderr)


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.local_run import list_records

    records, problems = list_records(StateHome.from_env())
    _report_skipped(problems)
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

    versions, problems = list_versions(StateHome.from_env())
    _report_skipped(problems)
    if args.json:
        print(json.dumps(versions, indent=2))
        return EXIT_OK
    if not versions:
        print("no registered models yet")
        return EXIT_OK
    print(f"{'MODEL':<36} {'VERSION':<8} {'ALIASES':<10} {'CREATED':<20} {'RUN':<14} METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={float(x):.4f}" for k, x in sorted(v["metrics"].items()))
        aliases = ",".join(v["aliases"]) or "-"
        print(f"{v['name']:<36} {v['version']:<8} {aliases:<10} {v['created']:<20} {v['execution_id']:<14} {metrics}")
    return EXIT_OK


def cmd_definition(args: argparse.Namespace) -> int:
    from pipelines.definition import definition_json

    print(definition_json(_config(args), _project(args), local=args.local, inference=args.inference))
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
    definition.add_argument("--inference", action="store_true", help="the daily batch-inference pipeline instead")
    definition.set_defaults(handler=cmd_definition)

    gate = commands.add_parser("gate", help="the deployment gate (Step Functions state machine)")
    gate_commands = gate.add_subparsers(dest="gate_command", required=True)
    gate_definition = gate_commands.add_parser("definition", help="print the gate's ASL JSON (offline)")
    gate_definition.set_defaults(handler=cmd_gate_definition)
    gate_run = gate_commands.add_parser("run", help="run the gate locally for a registered model version")
    gate_run.add_argument("--model", required=True, help="model name (the `name` in its YAML)")
    gate_run.add_argument("--version", help="registered version (default: the newest)")
    gate_run.add_argument("--config", help="model YAML (default: the one in ./models named --model)")
    gate_run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    gate_run.add_argument("--json", action="store_true")
    _add_common(gate_run, config=False)
    gate_run.set_defaults(handler=cmd_gate_run)

    provision = commands.add_parser("provision", help="provision infrastructure for a model")
    provision_commands = provision.add_subparsers(dest="provision_command", required=True)
    endpoint = provision_commands.add_parser(
        "endpoint", help="create or update a model's endpoint (locally, or the endpoint stack on AWS)"
    )
    endpoint.add_argument("--model", required=True, help="model name (the `name` in its YAML)")
    endpoint.add_argument("--config", help="model YAML (default: the one in ./models named --model)")
    endpoint.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    endpoint.add_argument("--version", help="registered version to serve (local; default: champion, else newest)")
    endpoint.add_argument("--deployment-type", choices=("realtime", "serverless"))
    endpoint.add_argument("--instance-type")
    endpoint.add_argument("--min-instances", type=int)
    endpoint.add_argument("--max-instances", type=int)
    endpoint.add_argument("--scale-in-cooldown", type=int, help="seconds")
    endpoint.add_argument("--scale-out-cooldown", type=int, help="seconds")
    endpoint.add_argument("--target-invocations", type=float, help="invocations per instance (copy) to track")
    endpoint.add_argument("--memory-size-mb", type=int, help="serverless memory")
    endpoint.add_argument("--max-concurrency", type=int, help="serverless maximum concurrency")
    endpoint.add_argument(
        "--ab", metavar="V=W,V=W", help="A/B: one production variant per registered version, traffic split by weight"
    )
    endpoint.add_argument("--target", choices=("local", "aws"), help="default: training.deployment_target")
    endpoint.add_argument("--model-package-arn", help="AWS: the Model Registry version to serve")
    endpoint.add_argument("--render", metavar="FILE", help="AWS: also write the rendered template here")
    endpoint.add_argument("--dry-run", action="store_true", help="AWS: print the deploy command, call nothing")
    endpoint.add_argument("--json", action="store_true")
    _add_common(endpoint, config=False)
    endpoint.set_defaults(handler=cmd_provision_endpoint)

    gateway = commands.add_parser("gateway", help="the local sagemaker-runtime endpoint (start/stop/status)")
    gateway_commands = gateway.add_subparsers(dest="gateway_command", required=True)
    gateway_start = gateway_commands.add_parser("start", help="start in the background (127.0.0.1)")
    gateway_start.add_argument("--port", type=int, help="default: a free port (foreground: 8080)")
    gateway_start.add_argument("--foreground", action="store_true", help="run in this terminal")
    _add_common(gateway_start, config=False)
    gateway_commands.add_parser("stop", help="stop it and every model server")
    gateway_commands.add_parser("status")
    gateway.set_defaults(handler=cmd_gateway)

    endpoints = commands.add_parser("endpoints", help="local endpoints: list; `show NAME`; `delete NAME`")
    endpoints.add_argument("--json", action="store_true")
    _add_common(endpoints, config=False)
    endpoints.set_defaults(handler=cmd_endpoints)
    endpoints_commands = endpoints.add_subparsers(dest="endpoints_command")
    for verb in ("show", "delete"):
        sub = endpoints_commands.add_parser(verb)
        sub.add_argument("name")
        sub.set_defaults(handler=cmd_endpoints)

    invoke = commands.add_parser("invoke", help="invoke a local endpoint through the sagemaker-runtime API")
    invoke.add_argument("name", help="endpoint name, e.g. sagegate-development-breast-cancer-serverless")
    invoke.add_argument("--file", help="request body (default: stdin), e.g. rows.csv")
    invoke.add_argument("--content-type", default="text/csv")
    invoke.add_argument("--accept", default="application/json")
    invoke.add_argument("--variant", help="TargetVariant")
    invoke.add_argument("--probabilities", action="store_true", help="class probabilities (classification)")
    _add_common(invoke, config=False)
    invoke.set_defaults(handler=cmd_invoke)

    batch = commands.add_parser("predict", help="batch predictions over CSV files (the daily inference job)")
    batch.add_argument("--model", required=True, help="NAME, NAME@alias (default @champion) or NAME@version")
    batch.add_argument("--input", required=True, help="CSV file or folder; s3://bucket/prefix reads the local S3")
    batch.add_argument("--output", required=True, help="output folder; s3://bucket/prefix writes the local S3")
    batch.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk (memory stays flat)")
    _add_common(batch, config=False)
    batch.set_defaults(handler=cmd_predict)

    executions = commands.add_parser("executions", help="list gate executions; `executions show ID` for one")
    executions.add_argument("--json", action="store_true")
    executions.set_defaults(handler=cmd_executions)
    executions_commands = executions.add_subparsers(dest="executions_command")
    show = executions_commands.add_parser("show", help="state-by-state history of one execution")
    show.add_argument("execution", help="execution name (or a unique prefix)")
    show.add_argument("--graph", metavar="PNG", help="also write the state-machine graph with the path taken")
    show.add_argument("-v", "--verbose", action="store_true", help="print each state's input and output")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_execution_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_sdk_logs()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, RuntimeError, OSError) as error:  # RunError, GateError, BatchError, ProvisionError...
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def get_pipeline_definition(argv: list[str] | None = None) -> int:
    """SageMaker project-template entry point: `get-pipeline-definition -f definition.json MODEL_YAML`."""
    parser = argparse.ArgumentParser(prog="get-pipeline-definition", description=get_pipeline_definition.__doc__)
    _add_common(parser)
    parser.add_argument("-f", "--file-name", help="write the JSON here instead of stdout")
    quiet_sdk_logs()
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
