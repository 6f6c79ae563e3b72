"""The model stack's schedules, fired locally: weekly training, daily batch inference, drift monitoring.

The expressions come from where the templates get them (model.yaml's parameter defaults for training
and inference, the model YAML's `monitoring.schedule`), in EventBridge Scheduler's syntax (`rate(N
unit)`, `cron(min hour day-of-month month day-of-week year)`, UTC). Like a schedule with no flexible
window, a fire missed while the runner was stopped is not replayed: the next fire is computed from
the time the runner starts. Training goes through `StartPipelineExecution` on the gateway's URL,
as the AWS schedule calls it; inference and monitoring run the commands their pipelines run locally.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from pipelines.config import ModelConfig
from pipelines.state import Project, StateHome

RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
CRON = re.compile(r"^cron\((\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\)$")
UNITS = {"minute": 60, "hour": 3600, "day": 86400}


class ScheduleError(ValueError):
    """An expression this runner cannot fire; the message names it."""


@dataclass(frozen=True)
class Schedule:
    name: str  # as the model stack names the EventBridge schedule
    model: str
    kind: str  # training | inference | monitoring
    expression: str
    source: str = ""  # the model YAML it comes from


def model_schedules(config: ModelConfig, project: Project, source: str = "") -> list[Schedule]:
    """The schedules the model stack creates for this model (names as the template's)."""
    from pipelines.templates import load

    defaults = {name: spec.get("Default") for name, spec in load("model.yaml")["Parameters"].items()}
    expressions = {"weekly-training": ("training", defaults["TrainingSchedule"]),
                   "daily-inference": ("inference", defaults["InferenceSchedule"])}  # fmt: skip
    if config.monitoring is not None and config.captures():
        expressions["drift-monitoring"] = ("monitoring", config.monitoring.schedule)
    return [
        Schedule(project.name(config.name, suffix), config.name, kind, expression, source)
        for suffix, (kind, expression) in expressions.items()
    ]


class LocalFire:
    """What each schedule starts locally: the training pipeline through StartPipelineExecution on the
    gateway (with the local token), the batch predictions and the drift monitor as their commands."""

    def __init__(self, home: StateHome, project: Project, log: Callable[[str], None]) -> None:
        self.home, self.project, self.log = home, project, log

    def __call__(self, schedule: Schedule, at: datetime) -> None:
        try:
            outcome = getattr(self, schedule.kind)(schedule, at)
        except Exception as error:  # one failed fire never stops the runner
            outcome = f"failed: {error}"
        self.log(f"{at:%Y-%m-%dT%H:%M:%SZ} {schedule.name}: {outcome}")

    def training(self, schedule: Schedule, at: datetime) -> str:
        import boto3

        from pipelines.local.api_token import local_token
        from pipelines.local.gateway import start_gateway

        url = start_gateway(self.home, self.project)["url"]
        sagemaker = boto3.client(
            "sagemaker", endpoint_url=url, region_name=self.project.region, aws_access_key_id="local",
            aws_secret_access_key="local", aws_session_token=local_token(self.home),
        )  # fmt: skip
        pipeline = self.project.pipeline_name(schedule.model)
        arn = sagemaker.start_pipeline_execution(PipelineName=pipeline)["PipelineExecutionArn"]
        return f"started {arn}"

    def _command(self, *args: str) -> str:
        command = [sys.executable, "-m", "pipelines.cli", *args, "--project", self.project.prefix,
                   "--env", self.project.environment, "--region", self.project.region]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(self.home.root)}
        )
        last = (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or [""]
        return f"exit {done.returncode}: {last[0]}"

    def inference(self, schedule: Schedule, at: datetime) -> str:
        bucket, model = self.project.bucket, schedule.model
        return self._command(
            "predict", "--model", model, "--input", f"s3://{bucket}/inference-data/{model}/",
            "--output", f"s3://{bucket}/predictions/{model}/{at:%Y%m%dT%H%M%SZ}",
        )  # fmt: skip

    def monitoring(self, schedule: Schedule, at: datetime) -> str:
        config_args = ["--config", schedule.source] if schedule.source else []
        endpoint = self.project.endpoint_name(schedule.model, "realtime")
        return self._command(
            "monitor", "run", "--endpoint", endpoint, "--until", f"{at:%Y-%m-%dT%H:%M:%SZ}", *config_args
        )


def _cron_fields(expression: str) -> str:
    """AWS's six-field cron as croniter's five: `?` is `*`, the year must be `*`, days of week 1-7
    (1 = Sunday) become 0-6."""
    match = CRON.match(expression)
    if not match:
        raise ScheduleError(f"{expression!r}: not rate(N unit) or cron(min hour day month weekday year)")
    minute, hour, day, month, weekday, year = match.groups()
    if year not in ("*", "?"):
        raise ScheduleError(f"{expression!r}: a year other than * is not fired locally")
    if re.search(r"[LW#]", day + weekday):
        raise ScheduleError(f"{expression!r}: L, W and # are not fired locally")

    def shift(part: str) -> str:
        return re.sub(r"\d+", lambda m: str(int(m.group()) - 1), part)

    weekday = "*" if weekday == "?" else (weekday if re.search(r"[A-Za-z]", weekday) else shift(weekday))
    fields = " ".join(["*" if day == "?" else day, month, weekday])
    cron = f"{minute} {hour} {fields}"
    if not croniter.is_valid(cron):
        raise ScheduleError(f"{expression!r}: not a valid cron expression")
    return cron


def next_fire(expression: str, after: datetime, anchor: datetime) -> datetime:
    """The first fire strictly after `after`; a rate schedule counts its periods from `anchor`."""
    rate = RATE.match(expression)
    if rate:
        period = timedelta(seconds=int(rate.group(1)) * UNITS[rate.group(2).rstrip("s")])
        if period <= timedelta(0):
            raise ScheduleError(f"{expression!r}: the rate must be positive")
        elapsed = (after - anchor) // period + 1
        return anchor + elapsed * period
    return croniter(_cron_fields(expression), after.astimezone(UTC)).get_next(datetime)


Fire = Callable[[Schedule, datetime], None]


class Runner:
    """Fires `schedules` at their times. `clock` and `sleep` are the real ones in use and fakes in tests."""

    def __init__(
        self,
        schedules: Iterable[Schedule],
        fire: Fire,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import time

        self.schedules = list(schedules)
        self.fire, self.clock, self.sleep = fire, clock, sleep or time.sleep
        self.started = clock()
        self.pending = {s: next_fire(s.expression, self.started, self.started) for s in self.schedules}

    def step(self) -> list[tuple[Schedule, datetime]]:
        """Sleep until the next fire time, fire what is due (once each), return what fired."""
        if not self.pending:
            return []
        due_at = min(self.pending.values())
        wait = (due_at - self.clock()).total_seconds()
        if wait > 0:
            self.sleep(min(wait, 60.0))  # re-checked at least every minute: a changed clock is noticed
            return []
        fired = []
        for schedule, at in sorted(self.pending.items(), key=lambda item: (item[1], item[0].name)):
            if at <= self.clock():
                self.fire(schedule, at)
                fired.append((schedule, at))
                # the next one after now: fires missed meanwhile (a long run, a suspended machine) are not replayed
                self.pending[schedule] = next_fire(schedule.expression, max(at, self.clock()), self.started)
        return fired
