"""Local state that survives concurrency and SIGKILL: real `sagegate run` processes on one state folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest

from pipelines.local.s3 import LocalS3
from pipelines.local_run import list_records, record_path
from pipelines.registry import list_versions
from pipelines.state import StateHome
from pipelines.statefiles import process_alive
from tests.conftest import MODELS, wait_for
from tests.processes import processes

MODEL = "sagegate-development-breast-cancer"


def sagegate_command(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "sagegate"), *args]


def environment(home: StateHome) -> dict[str, str]:
    return {**os.environ, "SAGEGATE_HOME": str(home.root)}


def assert_registry_consistent(home: StateHome) -> list[str]:
    """Every version's model.tar.gz (what the gate deploys) and MLflow model are on disk."""
    versions, problems = list_versions(home)
    assert problems == []
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    with LocalS3(home) as s3:
        missing = [v for v in versions if s3.read(v["model_data_uri"]) is None]
    assert missing == []
    for version in versions:
        location = client.get_model_version_download_uri(MODEL, version["version"])
        assert (Path(location.removeprefix("file://")) / "MLmodel").is_file(), (version, location)
    return [v["version"] for v in versions if v["name"] == MODEL]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> StateHome:
    return StateHome(tmp_path_factory.mktemp("durable") / "state")


def test_two_concurrent_runs_both_succeed_with_distinct_versions(shared: StateHome) -> None:
    def run(depth: int) -> subprocess.CompletedProcess:
        command = sagegate_command(
            "run", str(MODELS / "breast-cancer.yaml"), "--json", "--set", f"model.hyperparameters.max_depth={depth}"
        )
        return subprocess.run(command, capture_output=True, text=True, env=environment(shared), timeout=600)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, (4, 6)))
    records = [json.loads(result.stdout) for result in results]
    for result, record in zip(results, records, strict=True):
        assert result.returncode in (0, 1), result.stderr  # 1: the second may lose to the champion
        assert record["status"] == "Succeeded", record["failure_reason"]
    assert sorted(r["registered_version"] for r in records) == ["1", "2"]
    assert assert_registry_consistent(shared) == ["1", "2"]
    assert list(shared.jobs.iterdir()) == []  # each run removed its own scratch, and only that
    listed, problems = list_records(shared)
    assert problems == [] and {r.run_id for r in listed} == {r["run_id"] for r in records}


@pytest.mark.parametrize("step", ["PreprocessData", "TrainModel", "EvaluateModel", "RegisterMlflowModel", "gate"])
def test_sigkill_at_each_step_leaves_a_consistent_state(tmp_path: Path, shared: StateHome, step: str) -> None:
    home = StateHome(tmp_path / "state")
    if shared.root.exists():  # start from the concurrent runs' registry: kills must not damage it
        subprocess.run(["cp", "-a", str(shared.root), str(home.root)], check=True)
    before = {p.name for p in home.runs.glob("*.json")} if home.runs.is_dir() else set()
    process = subprocess.Popen(
        sagegate_command("run", str(MODELS / "breast-cancer.yaml")),
        env=environment(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    found: list[Path] = []

    def reached() -> bool:
        home.runs.mkdir(parents=True, exist_ok=True)
        fresh = StateHome(home.root)
        for path in fresh.runs.glob("*.json"):
            if path.name in before:
                continue
            record = json.loads(path.read_text())
            found[:] = [path]
            executing = [s["name"] for s in record["steps"] if s["status"] == "Executing"]
            if step == "gate" and record["status"] == "Succeeded":
                return True
            if record["status"] == "Executing" and step in executing:
                return True
        return process.poll() is not None

    wait_for(reached, f"the run to reach {step}", 180)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = json.loads(found[0].read_text())
    runner = killed["owner"]
    assert not process_alive(runner)
    # no job outlives the killed run (they die with their parent), so nothing registers later
    wait_for(lambda: not job_processes(home), "the killed run's jobs to exit", 20)
    versions = assert_registry_consistent(home)
    assert (home.jobs / killed["attempt"]).is_dir() == (step != "gate")  # what the kill left behind
    records, problems = list_records(home)
    assert problems == []
    shown = {r.attempt: r for r in records}[killed["attempt"]]
    assert shown.status == ("Succeeded" if step == "gate" else "Stopped")
    if step != "gate":
        assert "ended before the run finished" in shown.failure_reason
        assert all(s.status != "Executing" for s in shown.steps)
    # and a good run afterwards gets the next version and deploys
    good = subprocess.run(
        sagegate_command("run", str(MODELS / "breast-cancer.yaml"), "--json"),
        capture_output=True,
        text=True,
        env=environment(home),
        timeout=600,
    )
    record = json.loads(good.stdout)
    assert record["status"] == "Succeeded", record["failure_reason"]
    assert int(record["registered_version"]) == max(int(v) for v in [*versions, "0"]) + 1
    assert record["deployment"]["status"] == "SUCCEEDED", record["deployment"]
    assert assert_registry_consistent(home)[-1] == record["registered_version"]
    assert list(home.jobs.iterdir()) == []  # the good run also removed the killed run's job folder
    listing = subprocess.run(sagegate_command("runs"), capture_output=True, text=True, env=environment(home))
    assert killed["attempt"] in listing.stdout or killed["run_id"] in listing.stdout
    assert record["run_id"] in listing.stdout


def job_processes(home: StateHome) -> list[str]:
    """The state folder's run processes: job runners (their command line names the folder), the fork
    server and warm jobs (they work in it); not the gateway or the local S3 server, which outlive
    runs by design."""
    root = str(home.root)
    found = []
    for _, argv, cwd in processes():
        command = " ".join(argv)
        if (root in command or cwd.startswith(root)) and "gateway" not in command and "weed" not in command:
            found.append(command)
    return found


def test_unreadable_records_are_named_and_the_rest_listed(shared: StateHome) -> None:
    (shared.runs / "broken.json").write_text("{not json")
    executions = shared.root / "executions"
    executions.mkdir(parents=True, exist_ok=True)
    (executions / "broken.json").write_text('{"name": "x"}')
    try:
        for command, expected in (("runs", "breast-cancer"), ("executions", "breast-cancer-v")):
            result = subprocess.run(sagegate_command(command), capture_output=True, text=True, env=environment(shared))
            assert result.returncode == 0, result.stderr
            assert "broken.json" in result.stderr and "skipped" in result.stderr
            assert expected in result.stdout  # the readable records are listed
        listed, problems = list_records(shared)
        assert len(listed) == 2 and len(problems) == 1 and str(shared.runs / "broken.json") in problems[0]
    finally:
        (shared.runs / "broken.json").unlink()
        (executions / "broken.json").unlink()


def test_a_record_is_on_disk_while_the_run_executes(tmp_path: Path) -> None:
    """What `runs` shows for a run in progress: its record exists before the first job ends."""
    home = StateHome(tmp_path / "state")
    process = subprocess.Popen(
        sagegate_command("run", str(MODELS / "breast-cancer.yaml")),
        env=environment(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        path = wait_for(
            lambda: next(iter(home.runs.glob("*.json")), None) if home.runs.is_dir() else None, "a record", 120
        )
        record = json.loads(Path(path).read_text())
        assert record["status"] == "Executing" and process_alive(record["owner"])
        assert record_path(home, list_records(home)[0][0]) == path
    finally:
        process.kill()
        process.wait()
