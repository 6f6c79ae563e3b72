"""`sagegate gate definition | gate run | executions [show]`: the deployment gate and its history."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddParser,
    add_common,
    add_model_choice,
    chosen_model_config,
    project,
    report_skipped,
)
from pipelines.state import StateHome

if TYPE_CHECKING:  # the gate imports moto and the SageMaker SDK: loaded by the commands that need it
    from pipelines.local_gate import ExecutionRecord


def register(add: AddParser) -> None:
    gate = add("gate", help="the deployment gate (Step Functions state machine)")
    gate_commands = gate.add_subparsers(dest="gate_command", required=True)
    definition = gate_commands.add_parser("definition", help="print the gate's ASL JSON (offline)")
    definition.set_defaults(handler=definition_command)
    run = gate_commands.add_parser("run", help="run the gate locally for a registered model version")
    add_model_choice(run)
    run.add_argument("--version", help="registered version (default: the newest)")
    run.add_argument("--json", action="store_true")
    run.add_argument("--name", type=execution_name, help=argparse.SUPPRESS)  # set by StartExecution
    add_common(run, config=False)
    run.set_defaults(handler=run_command)

    executions = add("executions", help="list gate executions; `executions show ID` for one")
    executions.add_argument("--json", action="store_true")
    executions.set_defaults(handler=executions_command)
    executions_commands = executions.add_subparsers(dest="executions_command")
    show = executions_commands.add_parser("show", help="state-by-state history of one execution")
    show.add_argument("execution", help="execution name (or a unique prefix)")
    show.add_argument("--graph", metavar="PNG", help="also write the state-machine graph with the path taken")
    show.add_argument("-v", "--verbose", action="store_true", help="print each state's input and output")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_command)


def print_verdict(execution: ExecutionRecord) -> None:
    print(f"\nDeployment gate: {execution.verdict} (execution {execution.name}, {execution.duration_seconds:.1f}s)")
    for reason in execution.reasons:
        print(f"  - {reason}")
    if execution.status != "SUCCEEDED":
        if execution.error not in ("Sagegate.Rejected", "Sagegate.EvaluationFailed"):
            print(f"  cause: {execution.cause}")
        print("Nothing was deployed; the endpoint (if any) keeps serving its previous version.")
    print(f"  history: sagegate executions show {execution.name}")


def definition_command(args: argparse.Namespace) -> int:
    from pipelines.gate import gate_definition_json

    print(gate_definition_json())
    return EXIT_OK


def execution_name(text: str) -> str:
    """Step Functions' rule for execution names."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: 1-80 letters, digits, - and _")
    return text


def run_command(args: argparse.Namespace) -> int:
    from pipelines.local_gate import run_gate

    execution = run_gate(chosen_model_config(args), project(args), StateHome.from_env(), args.version, args.name)
    if args.json:
        print(json.dumps(execution.to_json(), indent=2))
    else:
        print_verdict(execution)
    return EXIT_OK if execution.status == "SUCCEEDED" else EXIT_FAILED


def executions_command(args: argparse.Namespace) -> int:
    from pipelines.local_gate import list_executions

    records, problems = list_executions(StateHome.from_env())
    report_skipped(problems)
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


def show_command(args: argparse.Namespace) -> int:
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
