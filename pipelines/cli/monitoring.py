"""`sagegate monitor run|show`: check an endpoint's captured traffic for drift, list past reports."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipelines.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, AddParser, add_names, add_overrides, project
from pipelines.config import ModelConfig
from pipelines.state import Project, StateHome


def register(add: AddParser) -> None:
    monitor = add("monitor", help="drift monitoring of an endpoint's captured traffic")
    commands = monitor.add_subparsers(dest="monitor_command", required=True)
    run = commands.add_parser(
        "run",
        help="run the monitoring job now (exit 0: no violations, 1: violations, 2: bad input)",
        description="Compare the endpoint's captured traffic in [--since, --until) with the champion's baseline.",
    )
    run.add_argument("--endpoint", required=True, help="endpoint name, e.g. sagegate-development-friedman1-realtime")
    run.add_argument("--config", help="model YAML (default: the one in ./models deploying to --endpoint)")
    add_overrides(run)
    run.add_argument("--since", help="window start, ISO 8601 (default: --until minus monitoring.window_minutes)")
    run.add_argument("--until", help="window end, ISO 8601 (default: now)")
    run.add_argument("--retrain", action="store_true", help="run the training pipeline and gate when features drifted")
    run.add_argument("--json", action="store_true", help="print the report summary as JSON")
    add_names(run)
    run.set_defaults(handler=run_command)
    show = commands.add_parser("show", help="list an endpoint's past monitoring reports")
    show.add_argument("endpoint")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_command)


def run_command(args: argparse.Namespace) -> int:
    from pipelines.monitor import MonitorError, config_for_endpoint, run_monitor

    names, home = project(args), StateHome.from_env()
    try:
        config = config_for_endpoint(names, args.endpoint, args.config, args.set)
        summary = run_monitor(home, names, config, args.endpoint, args.since, args.until)
    except MonitorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    retrain = bool(summary.get("drifted_features")) and (args.retrain or summary.get("retrain_requested"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    if retrain:
        summary["retraining"] = retrain_model(config, names, home, quiet=args.json)
    if summary["status"] == "nothing_to_check":
        return EXIT_OK
    return EXIT_FAILED if summary["violations"] else EXIT_OK


def retrain_model(config: ModelConfig, names: Project, home: StateHome, *, quiet: bool) -> dict[str, object]:
    """The training pipeline, then the gate on the version it registers (what the AWS monitor starts)."""
    from pipelines.local_gate import run_gate
    from pipelines.local_run import run_local

    if not quiet:
        print(f"retraining {config.name}: drift found, running the training pipeline")
    record = run_local(config, names, home)
    result: dict[str, object] = {"run": record.run_id, "status": record.status, "version": record.registered_version}
    if record.status == "Succeeded" and record.registered_version:
        execution = run_gate(config, names, home, record.registered_version)
        result["gate"] = execution.status
    if not quiet:
        print(f"retrained: run {record.run_id} {record.status}, version {record.registered_version}, "
              f"gate {result.get('gate', 'not run')}")  # fmt: skip
    return result


def print_summary(summary: dict[str, Any]) -> None:
    print(f"monitor {summary['endpoint']}: {summary['start_time']} to {summary['end_time']}")
    if summary["status"] == "nothing_to_check":
        print(f"  nothing to check: no captured data in the window ({summary['files']} capture files)")
        return
    rows, records, corrupt = summary["rows"], summary["records"], summary["corrupt_lines"]
    print(f"  {rows} rows from {records} captured requests, {corrupt} corrupt lines")
    drifted = summary.get("drifted_features") or []
    print(f"  violations: {summary['violations']}" + (f"; drifted: {', '.join(drifted)}" if drifted else ""))
    distances = summary.get("distances") or {}
    for name, value in sorted(distances.items(), key=lambda item: -item[1]):
        print(f"    {name:<24} distance {value:.3f}")
    report = summary["report"]
    print(f"  report: {report['path']}  ({report['uri']})")


def show_command(args: argparse.Namespace) -> int:
    from pipelines.monitor import list_reports

    reports = list_reports(StateHome.from_env(), args.endpoint)
    if args.json:
        print(json.dumps(reports, indent=2))
        return EXIT_OK
    if not reports:
        print(f"no monitoring reports for {args.endpoint} yet (sagegate monitor run --endpoint {args.endpoint})")
        return EXIT_OK
    print(f"{'window end':<22} {'rows':>7} {'violations':>10}  drifted")
    for report in reports:
        drifted = ", ".join(report.get("drifted_features") or []) or "-"
        print(f"{report['end_time']:<22} {report.get('rows', 0):>7} {report.get('violations', 0):>10}  {drifted}")
    print(f"latest report: {reports[-1]['report']['path']}")
    return EXIT_OK
