"""`sagegate schedule list|run`: the model stack's schedules (training, inference, monitoring), fired locally."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pipelines.cli.common import EXIT_FAILED, EXIT_OK, AddParser, add_names, project
from pipelines.config import discovered_configs, load_config
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError, locked, process_alive, process_token, read_json, write_json


def register(add: AddParser) -> None:
    schedule = add("schedule", help="the model stack's schedules, fired locally")
    commands = schedule.add_subparsers(dest="schedule_command", required=True)
    listing = commands.add_parser("list", help="each schedule's expression and next fire time (UTC)")
    listing.add_argument("configs", nargs="*", help="model YAMLs (default: ./models, then the bundled examples)")
    listing.add_argument("--json", action="store_true")
    add_names(listing)
    listing.set_defaults(handler=list_command)
    run = commands.add_parser("run", help="fire them as they come due (foreground, or --background)")
    run.add_argument("configs", nargs="*", help="model YAMLs (default: ./models, then the bundled examples)")
    run.add_argument("--background", action="store_true", help="detach; the log is schedules/runner.log")
    add_names(run)
    run.set_defaults(handler=run_command)
    stop = commands.add_parser("stop", help="stop the background schedule runner")
    stop.set_defaults(handler=stop_command)


def configured(project: Project, paths: list[str]) -> list:
    """Every schedule of the given YAMLs (an invalid one is the command's error), or of ./models then the
    bundled examples (first of each name)."""
    from pipelines.schedules import model_schedules

    found = [(Path(path), load_config(path)) for path in paths] if paths else discovered_configs()
    seen, schedules = set(), []
    for path, config in found:
        if config.name not in seen:
            seen.add(config.name)
            schedules += model_schedules(config, project, str(path.resolve()))
    return schedules


def list_command(args: argparse.Namespace) -> int:
    from pipelines.schedules import next_fire

    now = datetime.now(UTC)
    rows = [
        {"name": s.name, "kind": s.kind, "expression": s.expression,
         "next_fire": next_fire(s.expression, now, now).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for s in configured(project(args), args.configs)
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'schedule':<58} {'expression':<22} next fire (UTC)")
    for row in rows:
        print(f"{row['name']:<58} {row['expression']:<22} {row['next_fire']}")
    return EXIT_OK


def runner_record(home: StateHome) -> Path:
    return home.root / "schedules" / "runner.json"


def live_runner(home: StateHome) -> dict | None:
    path = runner_record(home)
    try:
        record = read_json(path) if path.is_file() else None
    except StateFileError:
        return None
    return record if isinstance(record, dict) and process_alive(str(record.get("process", ""))) else None


def run_command(args: argparse.Namespace) -> int:
    from pipelines.schedules import LocalFire, Runner

    home, names = StateHome.from_env().ensure(), project(args)
    folder = home.root / "schedules"
    folder.mkdir(parents=True, exist_ok=True)
    if args.background:
        command = [sys.executable, "-m", "pipelines.cli", *(a for a in sys.argv[1:] if a != "--background")]
        with (folder / "runner.log").open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy()
            )
        deadline = time.monotonic() + 60
        while (live_runner(home) or {}).get("pid") != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "runner.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                print(f"error: the schedule runner did not start: {tail[0]}", file=sys.stderr)
                return EXIT_FAILED
            time.sleep(0.05)
        print(f"schedule runner started (pid {process.pid}); log {folder / 'runner.log'}; `sagegate schedule stop`")
        return EXIT_OK
    schedules = configured(names, args.configs)

    def log(line: str) -> None:
        print(line, flush=True)

    runner = Runner(schedules, LocalFire(home, names, log))
    for schedule, at in sorted(runner.pending.items(), key=lambda item: item[1]):
        log(f"{schedule.name} ({schedule.expression}): next {at:%Y-%m-%dT%H:%M:%SZ}")
    with locked(runner_record(home)):  # one runner per state folder: two would fire everything twice
        running = live_runner(home)
        if running:
            print(
                f"error: a schedule runner already runs (pid {running['pid']}): `sagegate schedule stop`",
                file=sys.stderr,
            )
            return EXIT_FAILED
        write_json(runner_record(home), {"pid": os.getpid(), "process": process_token()})

    while True:
        runner.step()


def stop_command(args: argparse.Namespace) -> int:
    home = StateHome.from_env()
    running = live_runner(home)
    if running is None:
        print("no schedule runner running")
        return EXIT_OK
    os.killpg(int(running["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while process_alive(running["process"]):
        if time.monotonic() > deadline:
            os.killpg(int(running["pid"]), signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.05)
    runner_record(home).unlink(missing_ok=True)
    print(f"stopped the schedule runner (pid {running['pid']})")
    return EXIT_OK
