"""Starting `sagegate run` and `sagegate gate run` as processes of their own.

StartPipelineExecution, StartExecution and the console's buttons all start work this way, so a
run started from any of them is exactly the run the command line would make (its own process, its
record, its logs) and outlives the server that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from pipelines.state import Project, StateHome

START_TIMEOUT_SECONDS = 60  # for a started run's record to appear


class LaunchError(RuntimeError):
    """The process ended (or hung) before its run started; the message ends with its last line."""


def cli_command(project: Project, *arguments: str) -> list[str]:
    """`sagegate ARGUMENTS` for this project's names, run by this interpreter."""
    names = ("--project", project.prefix, "--env", project.environment, "--region", project.region)
    return [sys.executable, "-m", "pipelines.cli", *arguments, *names]


def _environment(home: StateHome) -> dict[str, str]:
    return {**os.environ, "SAGEGATE_HOME": str(home.root)}


def _spawn(home: StateHome, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The command in a session of its own (it outlives the server), output to `log`, reaped when it ends."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=output, stdin=subprocess.DEVNULL, start_new_session=True,
            env=_environment(home),
        )  # fmt: skip
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else "no output"


def start_run(home: StateHome, project: Project, config_path: Path) -> str:
    """`sagegate run CONFIG` in the background; returns its attempt id once the run's record exists."""
    from pipelines.local_run import attempt_logs, attempt_path  # the run's module imports the SDK: only here

    attempt = uuid.uuid4().hex[:12]
    log = attempt_logs(home, attempt) / "start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    process = _spawn(home, cli_command(project, "run", str(config_path), "--attempt", attempt), log)
    record = attempt_path(home, attempt)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not record.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            raise LaunchError(f"the run did not start: {_last_line(log)} (see {log})")
        time.sleep(0.05)
    return attempt


def gate_command(project: Project, model: str, config_path: Path, version: str, name: str) -> list[str]:
    """`sagegate gate run` for one registered version, under the execution name given."""
    arguments = ("gate", "run", "--model", model, "--config", str(config_path), "--version", version, "--name", name)
    return cli_command(project, *arguments)


def run_gate_process(home: StateHome, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The gate in its own process, waited for (the local gate takes seconds)."""
    return subprocess.run(command, capture_output=True, text=True, env=_environment(home), timeout=timeout)


def start_gate(home: StateHome, command: list[str], name: str) -> Path:
    """The gate in the background; returns its log (stdout and stderr), which names the outcome."""
    log = home.executions / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _spawn(home, command, log)
    return log
