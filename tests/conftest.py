"""Shared fixtures: the repository root, example configs and an isolated state folder."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# (message regex, category, module regex, reason): warnings only the tests meet. No ":" in a regex:
# pytest splits its filter lines on colons.
TEST_WARNINGS = [
    (
        r"Tried to parse AWS.{2}S3.{2}BucketPolicy but it.s not supported",
        UserWarning,
        r"moto\.cloudformation\..*",
        "moto's CloudFormation skips bucket policies; cfn-lint, checkov and cfripper check them in make test",
    ),
]


def pytest_configure(config: pytest.Config) -> None:
    """Hide only named third-party warnings (the CLI's, pipelines/logs.py, and the tests' own): no
    blanket filters, so any other warning shows in the summary."""
    from pipelines.logs import KNOWN_WARNINGS

    for message, category, module, _reason in [*KNOWN_WARNINGS, *TEST_WARNINGS]:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}:{module}")


ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DATA = ROOT / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines.state import StateHome

    monkeypatch.setenv("SAGEGATE_HOME", str(tmp_path / "state"))
    return StateHome.from_env()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    """Poll `condition` until it is truthy and return its value; fail the test naming `what` when the
    deadline passes (a condition with a deadline, never a sleep standing in for one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_console(home: Any) -> Iterator[tuple[str, str]]:
    """`sagegate console --port 0` on a state folder, as its own process: (base URL, token)."""
    log = home.root / "console.log"
    with log.open("w") as output:
        console = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "console", "--port", "0"],
            stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "SAGEGATE_HOME": str(home.root)},
        )  # fmt: skip
    try:
        url = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)")
        match = wait_for(lambda: url.search(log.read_text()) or console.poll() is not None, "the console's URL")
        assert isinstance(match, re.Match), f"the console ended: {log.read_text()}"
        yield match.group(1), match.group(2)
    finally:
        os.killpg(console.pid, signal.SIGTERM)
        console.wait(timeout=30)


def write_config(tmp_path: Path, text: str, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop local S3 servers and model servers that tests left running (a test that SIGKILLs a command
    leaves its server to the next command on that state folder, a gateway that ends without stopping
    its model servers leaves them to the next gateway, and the last test of a folder may run neither)."""
    from pipelines.local.model_server import reap_orphans
    from pipelines.local.s3_server import S3Server
    from pipelines.statefiles import locked

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    base = factory.getbasetemp()
    for record in base.rglob("s3store/server.json"):
        server = S3Server(record.parent)
        with locked(server.record):
            server.stop()
    for models in base.rglob("serving/models"):
        reap_orphans(models)
