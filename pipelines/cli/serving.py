"""`sagegate provision endpoint | gateway | endpoints | invoke`: local endpoints and how to reach them."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddParser,
    add_common,
    add_model_choice,
    add_names,
    chosen_model_config,
    project,
    report_skipped,
)
from pipelines.config import ConfigError
from pipelines.state import StateHome


def register(add: AddParser) -> None:
    provision = add("provision", help="provision infrastructure for a model")
    provision_commands = provision.add_subparsers(dest="provision_command", required=True)
    endpoint = provision_commands.add_parser(
        "endpoint", help="create or update a model's endpoint (locally, or the endpoint stack on AWS)"
    )
    add_model_choice(endpoint)
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
        "--ab",
        metavar="V=W,V=W",
        type=ab_weights,
        help="A/B: one production variant per registered version, traffic split by weight (default: the YAML's "
        "deployment.variants)",
    )
    endpoint.add_argument("--target", choices=("local", "aws"), help="default: training.deployment_target")
    endpoint.add_argument("--model-package-arn", help="AWS: the Model Registry version to serve")
    endpoint.add_argument("--render", metavar="FILE", help="AWS: also write the rendered template here")
    endpoint.add_argument("--dry-run", action="store_true", help="AWS: print the deploy command, call nothing")
    endpoint.add_argument("--json", action="store_true")
    add_common(endpoint, config=False)
    endpoint.set_defaults(handler=provision_command)

    gateway = add("gateway", help="the local sagemaker-runtime endpoint (start/stop/status)")
    gateway_commands = gateway.add_subparsers(dest="gateway_command", required=True)
    start = gateway_commands.add_parser("start", help="start in the background (127.0.0.1)")
    start.add_argument("--port", type=int, help="default: a free port (foreground: 8080)")
    start.add_argument("--foreground", action="store_true", help="run in this terminal")
    add_common(start, config=False)
    gateway_commands.add_parser("stop", help="stop it and every model server")
    gateway_commands.add_parser("status")
    gateway.set_defaults(handler=gateway_command)

    endpoints = add("endpoints", help="local endpoints: list; `show NAME`; `delete NAME`")
    endpoints.add_argument("--json", action="store_true")
    add_common(endpoints, config=False)
    endpoints.set_defaults(handler=endpoints_command)
    endpoints_commands = endpoints.add_subparsers(dest="endpoints_command")
    show = endpoints_commands.add_parser("show", help="one endpoint: variants, components, model servers")
    show.add_argument("name")
    add_names(show, default=argparse.SUPPRESS)
    show.set_defaults(handler=endpoint_show_command)
    report = endpoints_commands.add_parser(
        "shadow-report", help="a shadow test's pairs: agreement, latency of each side, errors"
    )
    report.add_argument("name")
    report.add_argument("--json", action="store_true")
    add_names(report, default=argparse.SUPPRESS)
    report.set_defaults(handler=shadow_report_command)
    delete = endpoints_commands.add_parser("delete")
    delete.add_argument("name")
    add_names(delete, default=argparse.SUPPRESS)
    delete.set_defaults(handler=endpoint_delete_command)

    invoke = add("invoke", help="invoke a local endpoint through the sagemaker-runtime API")
    invoke.add_argument("name", help="endpoint name, e.g. sagegate-development-breast-cancer-serverless")
    invoke.add_argument("--file", help="request body (default: stdin), e.g. rows.csv")
    invoke.add_argument("--content-type", default="text/csv")
    invoke.add_argument("--accept", default="application/json")
    invoke.add_argument("--variant", help="TargetVariant")
    invoke.add_argument("--probabilities", action="store_true", help="class probabilities (classification)")
    add_common(invoke, config=False)
    invoke.set_defaults(handler=invoke_command)


def ab_weights(text: str) -> dict[str, float]:
    """`--ab 3=0.8,4=0.2` → {"3": 0.8, "4": 0.2}: two or more versions with positive weights."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        version, _, weight = part.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not version.strip().isdigit() or value <= 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected VERSION=WEIGHT pairs with positive weights, e.g. 3=0.8,4=0.2"
            )
        weights[version.strip()] = value
    if len(weights) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: an A/B endpoint needs at least two versions")
    return weights


def provision_command(args: argparse.Namespace) -> int:
    from pipelines.cross_region import arn_region, replicate_model_package
    from pipelines.provision import (
        ab_template_parameters,
        aws_deploy_command,
        provision_local,
        shadow_template_parameters,
        template_parameters,
        variant_weights,
        with_overrides,
    )
    from pipelines.templates import load

    config = with_overrides(chosen_model_config(args), vars(args))
    names = project(args)
    target = args.target or ("local" if config.training.deployment_target == "local" else "aws")
    if config.deployment.llm is not None:
        if target == "local":
            raise ConfigError(
                f"{config.name}: LLM endpoints (deployment.llm) are AWS-only: no local model server runs "
                "Hugging Face LLM containers; provision it with --target aws"
            )
        return provision_llm(args, config, names)
    if target == "local":
        weights = args.ab or (None if args.version else variant_weights(config))
        described = provision_local(config, names, StateHome.from_env(), args.version, weights)
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
        serving = described["EndpointStatus"] == "InService" and not described.get("FailureReason")
        return EXIT_OK if serving else EXIT_FAILED
    weights = args.ab or variant_weights(config)
    if weights or config.deployment.shadow:  # the two-variant stack: A/B, or a shadow test
        if args.model_package_arn:
            raise ConfigError("--model-package-arn serves one version; a two-variant endpoint names its versions")
        if weights:
            template, parameters = ab_template_parameters(config, names, weights)
        else:
            template, parameters = shadow_template_parameters(config, names, args.version)
        return deploy_stack(args, load(template), parameters, aws_deploy_command(config, names, template, parameters))
    if not args.model_package_arn:
        raise ConfigError("--target aws needs --model-package-arn (the approved Model Registry version to serve)")
    if arn_region(args.model_package_arn) != names.region:  # trained elsewhere: serve a replica from here
        if args.dry_run:
            print(f"+ replicate {args.model_package_arn} into {names.region} (artifact, image, model package)")
        else:
            args.model_package_arn = replicate_model_package(args.model_package_arn, config.name, names)
            print(f"replicated into {names.region}: {args.model_package_arn}")
    template, parameters = template_parameters(config, names, args.model_package_arn)
    return deploy_stack(args, load(template), parameters, aws_deploy_command(config, names, template, parameters))


def deploy_stack(args: argparse.Namespace, template: dict, parameters: dict[str, str], command: list[str]) -> int:
    """`--render FILE` writes the template as deployed; the deploy command is printed, then run
    unless `--dry-run`."""
    from pipelines.templates import render_template

    if args.render:
        Path(args.render).write_text(json.dumps(render_template(template, parameters), indent=2) + "\n")
    print("+ " + shlex.join(command))
    if args.dry_run:
        return EXIT_OK
    return subprocess.run(command, check=False).returncode


def provision_llm(args: argparse.Namespace, config: Any, names: Any) -> int:
    """The LLM endpoint stack: endpoint-llm.yaml specialised with the container environment."""
    from pipelines.provision import aws_deploy_command, llm_template, template_parameters

    if args.ab or args.model_package_arn or args.version:
        raise ConfigError("an LLM endpoint serves deployment.llm's base model and adapter: no --ab/--version/package")
    template = llm_template(config)
    out = Path(os.environ.get("SAGEGATE_BUILD_DIR", "build")) / "provision"
    out.mkdir(parents=True, exist_ok=True)
    template_file = out / f"{names.stack_name(config.name, 'endpoint')}.json"
    template_file.write_text(json.dumps(template, indent=2) + "\n")
    name, parameters = template_parameters(config, names, None)
    command = aws_deploy_command(config, names, name, parameters, str(template_file))
    return deploy_stack(args, template, parameters, command)


def gateway_command(args: argparse.Namespace) -> int:
    from pipelines.local.api_token import local_token, token_path
    from pipelines.local.gateway import running_gateway, serve, start_gateway, stop_gateway

    home = StateHome.from_env().ensure()
    if args.gateway_command == "start":
        if args.foreground:
            serve(args.port or 8080)
            return EXIT_OK
        info = start_gateway(home, project(args), args.port)
        local_token(home)
        print(f"local sagemaker-runtime at {info['url']} (pid {info['pid']})")
        print(f"  boto3.client('sagemaker-runtime', endpoint_url='{info['url']}')")
        print("  also the SageMaker and Step Functions APIs (boto3.client('sagemaker', endpoint_url=...));")
        print(f"  StartPipelineExecution needs aws_session_token = the contents of {token_path(home)}")
    elif args.gateway_command == "stop":
        print("stopped" if stop_gateway(home) else "no gateway running")
    else:
        info = running_gateway(home)
        print(f"running at {info['url']} (pid {info['pid']})" if info else "not running")
    return EXIT_OK


def endpoints_command(args: argparse.Namespace) -> int:
    from pipelines.local.endpoint_status import endpoint_rows
    from pipelines.local.gateway import running_gateway

    home = StateHome.from_env()
    rows, problems = endpoint_rows(home, project(args))
    report_skipped(problems)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    gateway = running_gateway(home)
    print(f"gateway: {gateway['url'] if gateway else 'not running (`sagegate gateway start`)'}")
    if not rows:
        print("no local endpoints yet: `sagegate run` deploys one when the gate passes")
    for row in rows:
        print(
            f"{row['EndpointName']:<48} {row['EndpointStatus']:<10} {row['EndpointConfigName']:<52} "
            f"{row['Invocations']} invocations"
        )
    return EXIT_OK


def endpoint_show_command(args: argparse.Namespace) -> int:
    from pipelines.local.endpoint_status import endpoint_detail

    detail, problems = endpoint_detail(StateHome.from_env(), project(args), args.name)
    report_skipped(problems)
    print(json.dumps(detail, indent=2, default=str))
    return EXIT_OK


def endpoint_delete_command(args: argparse.Namespace) -> int:
    from pipelines.local.endpoints import EndpointManager

    EndpointManager(StateHome.from_env(), project(args)).call("deleteEndpoint", {"EndpointName": args.name})
    print(f"deleted {args.name}")
    return EXIT_OK


def shadow_report_command(args: argparse.Namespace) -> int:
    from pipelines.local.shadow import shadow_report

    report = shadow_report(StateHome.from_env(), args.name)
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report["pairs"]:
        print(f"no shadow pairs for {args.name} yet (an endpoint with deployment.shadow, and traffic)")
    else:
        agreement = "n/a" if report["agreement"] is None else f"{100 * report['agreement']:.1f}%"
        print(f"{args.name}: {report['pairs']} sampled requests, {report['from']} to {report['to']}")
        print(f"  agreement of {report['shadow_variant']} with {report['production_variant']}: {agreement}")
        for side in ("production", "shadow"):
            latency = report[f"{side}_ms"] or {"p50": float("nan"), "p99": float("nan")}
            print(f"  {side:<10} p50 {latency['p50']:.2f} ms  p99 {latency['p99']:.2f} ms  "
                  f"errors {report[f'{side}_errors']}")  # fmt: skip
        print(f"  (shadow latency from the {report['shadow_latency_requests']} copies sent alone; "
              "the rest went in batches, compared row by row)")  # fmt: skip
    return EXIT_OK


def invoke_command(args: argparse.Namespace) -> int:
    from pipelines.local.gateway import runtime_client

    runtime = runtime_client(StateHome.from_env().ensure(), project(args))
    body = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
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
