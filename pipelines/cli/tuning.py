"""`sagegate tuning show RUN_ID`: a tuned run's trials (hyperparameters, objective, status) and a plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli.common import EXIT_OK, AddParser, report_skipped
from pipelines.state import StateHome


def register(add: AddParser) -> None:
    group = add("tuning", help="the trials of tuned runs").add_subparsers(dest="tuning_command", required=True)
    show = group.add_parser("show", help="a tuned run's trials table; writes the objective plot")
    show.add_argument("run_id", help="a run id from `sagegate runs` (a run of a model with a `tuning` block)")
    show.add_argument("--plot", type=Path, help="where to write the plot (default: beside the run records)")
    show.add_argument("--json", action="store_true", help="the tuning job and its trials as JSON")
    show.set_defaults(handler=show_command)


def show_command(args: argparse.Namespace) -> int:
    from pipelines import tuning_report
    from pipelines.local_run import list_records

    home = StateHome.from_env()
    records, problems = list_records(home)
    report_skipped(problems)
    record = next((r for r in records if args.run_id in (r.run_id, r.attempt)), None)
    if record is None:
        known = ", ".join(r.run_id for r in records if r.tuning) or "none yet"
        raise ValueError(f"no run {args.run_id!r} in {home.runs} (tuned runs: {known})")
    if not record.tuning:
        raise ValueError(f"run {record.run_id} ({record.model}) was not tuned: its model YAML has no `tuning` block")
    if args.json:
        print(json.dumps(record.tuning, indent=2))
        return EXIT_OK
    tuning = record.tuning
    best = next(t for t in tuning["trials"] if t["training_job"] == tuning["best_training_job"])
    print(
        f"tuning job {tuning['job']} ({tuning['strategy']}): {len(tuning['trials'])} trials, "
        f"best {tuning['objective']}={best['objective']:.6g} from trial {best['trial']} ({best['training_job']})"
    )
    for line in tuning_report.trial_lines(tuning):
        print(f"  {line}")
    path = tuning_report.plot(tuning, args.plot or home.runs / "tuning" / f"{record.run_id}.png")
    print(f"plot: {path}")
    if tuning.get("mlflow_parent_run"):
        print(f"MLflow: parent run {tuning['mlflow_parent_run']} ({home.mlflow_tracking_uri}), a child run per trial")
    return EXIT_OK
