"""The model stack's schedules fired locally: EventBridge expressions, a fake clock, no replay of missed fires."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.schedules import Runner, Schedule, ScheduleError, model_schedules, next_fire
from pipelines.state import Project
from pipelines.templates import load
from tests.conftest import MODELS

MONDAY = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("cron(0 2 ? * SUN *)", datetime(2026, 12, 6, 2, 0, tzinfo=UTC)),
        ("cron(0 2 ? * 1 *)", datetime(2026, 12, 6, 2, 0, tzinfo=UTC)),  # AWS: 1 is Sunday
        ("cron(30 6 ? * 2-6 *)", datetime(2026, 12, 1, 6, 30, tzinfo=UTC)),  # Monday-Friday, after 08:00 Monday
        ("cron(0 6 * * ? *)", datetime(2026, 12, 1, 6, 0, tzinfo=UTC)),
        ("cron(15 10 1 * ? *)", datetime(2026, 12, 1, 10, 15, tzinfo=UTC)),
        ("rate(1 hour)", MONDAY + timedelta(hours=1)),
        ("rate(15 minutes)", MONDAY + timedelta(minutes=15)),
        ("rate(2 days)", MONDAY + timedelta(days=2)),
    ],
)
def test_eventbridge_expressions_fire_when_eventbridge_would(expression: str, expected: datetime) -> None:
    assert next_fire(expression, MONDAY, MONDAY) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("cron(0 2 ? * SUN 2027)", "a year other than"),
        ("cron(0 2 L * ? *)", "L, W and #"),
        ("cron(0 2 * *)", "not rate"),
        ("cron(99 2 * * ? *)", "not a valid cron"),
        ("every hour", "not rate"),
    ],
)
def test_expressions_it_cannot_fire_are_refused_by_name(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as raised:
        next_fire(expression, MONDAY, MONDAY)
    assert repr(expression) in str(raised.value)


def test_the_schedules_are_the_model_stacks() -> None:
    defaults = {name: spec.get("Default") for name, spec in load("model.yaml")["Parameters"].items()}
    friedman1 = model_schedules(load_config(MODELS / "friedman1.yaml"), Project())
    assert [(s.name, s.expression) for s in friedman1] == [
        ("sagegate-development-friedman1-weekly-training", defaults["TrainingSchedule"]),
        ("sagegate-development-friedman1-daily-inference", defaults["InferenceSchedule"]),
        ("sagegate-development-friedman1-drift-monitoring", "rate(1 hour)"),
    ]
    template = load("model.yaml")["Resources"]
    assert template["WeeklyTraining"]["Properties"]["Name"]["Fn::Sub"].endswith("-weekly-training")
    assert template["DriftMonitoring"]["Properties"]["Name"]["Fn::Sub"].endswith("-drift-monitoring")
    assert [s.kind for s in model_schedules(load_config(MODELS / "breast-cancer.yaml"), Project())] == [
        "training",
        "inference",
    ]  # fmt: skip (no capture, no monitor)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


SCHEDULES = [
    Schedule("weekly-training", "m", "training", "cron(0 2 ? * SUN *)"),
    Schedule("daily-inference", "m", "inference", "cron(0 6 * * ? *)"),
    Schedule("drift-monitoring", "m", "monitoring", "rate(1 hour)"),
]


def run_until(runner: Runner, clock: FakeClock, end: datetime) -> list[tuple[str, datetime]]:
    fired: list[tuple[str, datetime]] = []
    while clock.now < end:
        fired += [(schedule.name, at) for schedule, at in runner.step()]
    return fired


def test_a_fake_weekend_fires_each_schedule_at_its_times_once() -> None:
    saturday = datetime(2026, 12, 5, 23, 0, tzinfo=UTC)
    clock = FakeClock(saturday)
    seen: list[tuple[str, datetime]] = []
    runner = Runner(SCHEDULES, lambda schedule, at: seen.append((schedule.name, at)), clock, clock.sleep)
    fired = run_until(runner, clock, datetime(2026, 12, 7, 7, 0, tzinfo=UTC))
    assert fired == seen
    assert [at for name, at in fired if name == "weekly-training"] == [datetime(2026, 12, 6, 2, 0, tzinfo=UTC)]
    assert [at for name, at in fired if name == "daily-inference"] == [
        datetime(2026, 12, 6, 6, 0, tzinfo=UTC), datetime(2026, 12, 7, 6, 0, tzinfo=UTC),
    ]  # fmt: skip
    hourly = [at for name, at in fired if name == "drift-monitoring"]
    assert hourly == [saturday + timedelta(hours=h) for h in range(1, 32)]  # up to, not at, the end


def test_fires_missed_while_stopped_or_busy_are_not_replayed() -> None:
    clock = FakeClock(MONDAY)
    fired: list[tuple[str, datetime]] = []

    def slow(schedule: Schedule, at: datetime) -> None:  # the first fire keeps the runner busy for 5 hours
        fired.append((schedule.name, at))
        if len(fired) == 1:
            clock.now += timedelta(hours=5)

    runner = Runner(SCHEDULES[2:], slow, clock, clock.sleep)
    run_until(runner, clock, MONDAY + timedelta(hours=7, minutes=30))
    assert [at for _, at in fired] == [MONDAY + timedelta(hours=h) for h in (1, 7)]
    # stopped on Monday, started again on Wednesday at noon: Monday's and Tuesday's fires are gone
    clock.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    later: list[tuple[str, datetime]] = []
    restarted = Runner(SCHEDULES[:2], lambda s, at: later.append((s.name, at)), clock, clock.sleep)
    run_until(restarted, clock, datetime(2026, 12, 3, 7, 0, tzinfo=UTC))
    assert later == [("daily-inference", datetime(2026, 12, 3, 6, 0, tzinfo=UTC))]


def test_schedule_list_prints_the_next_fire_times(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "sagegate"
    done = subprocess.run(
        [str(exe), "schedule", "list", str(MODELS / "friedman1.yaml"), "--json"],
        capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["kind"] for r in rows] == ["training", "inference", "monitoring"]
    for row in rows:
        fire = datetime.fromisoformat(row["next_fire"].replace("Z", "+00:00"))
        assert datetime.now(UTC) < fire <= datetime.now(UTC) + timedelta(days=7)
    bad = subprocess.run(
        [str(exe), "schedule", "list", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
        env={**os.environ, "SAGEGATE_HOME": str(tmp_path)},
    )  # fmt: skip
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


def test_one_background_runner_per_state_folder_and_stop_ends_it(tmp_path: Path) -> None:
    from pipelines.statefiles import process_alive

    exe = str(Path(sys.executable).parent / "sagegate")
    environment = {**os.environ, "SAGEGATE_HOME": str(tmp_path / "state")}

    def sagegate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([exe, *args], capture_output=True, text=True, env=environment)

    config = str(MODELS / "friedman1.yaml")
    started = sagegate("schedule", "run", config, "--background")
    assert started.returncode == 0, started.stderr
    record = json.loads((tmp_path / "state" / "schedules" / "runner.json").read_text())
    assert process_alive(record["process"])
    second = sagegate("schedule", "run", config, "--background")
    assert second.returncode == 1 and "already runs" in second.stderr
    assert "drift-monitoring (rate(1 hour)): next" in (tmp_path / "state" / "schedules" / "runner.log").read_text()
    stopped = sagegate("schedule", "stop")
    assert stopped.returncode == 0 and f"pid {record['pid']}" in stopped.stdout
    assert not process_alive(record["process"])
    assert sagegate("schedule", "stop").stdout.strip() == "no schedule runner running"
