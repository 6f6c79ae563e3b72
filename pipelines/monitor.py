"""`sagegate monitor`: the drift monitor, run locally on an endpoint's captured traffic.

Runs `containers/monitor/monitor.py` (what the AWS monitoring pipeline's processing step runs) as
a subprocess with Model Monitor's custom-container environment, reading the captures from the local
S3 exactly as the job reads them from S3 on AWS. The baseline is the serving version's (the
champion's `monitoring.baseline_uri`); reports go to `s3://{bucket}/monitoring/reports/{endpoint}/`
and to the state folder (`monitoring/{endpoint}/{time}/`), where `monitor show` lists them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig, discovered_configs, load_config
from pipelines.containers import container_code
from pipelines.local.capture import await_delivery, deliver, recover, spool_folder
from pipelines.local.gateway import running_gateway
from pipelines.local.s3 import LocalS3
from pipelines.state import Project, StateHome
from pipelines.statefiles import read_json, write_bytes, write_json

DELIVERY_WAIT_SECONDS = 15
REPORT_FILES = ("summary.json", "constraint_violations.json", "statistics.json", "report.html")


class MonitorError(RuntimeError):
    """The monitor could not check anything (no baseline, bad input); the message says why."""


def reports_folder(home: StateHome, endpoint: str) -> Path:
    return home.root / "monitoring" / endpoint


def config_for_endpoint(project: Project, endpoint: str, config_path: str | None, overrides: list[str]) -> ModelConfig:
    """The model YAML whose endpoint is `endpoint`: `--config`, else ./models, then the bundled examples."""
    if config_path:
        candidates = [(Path(config_path), load_config(config_path, overrides))]
    else:
        candidates = list(discovered_configs(overrides))
    for _, config in candidates:
        if project.endpoint_name(config.name, config.deployment.type) == endpoint:
            return config
    where = config_path or "./models or the bundled examples"
    raise MonitorError(f"--endpoint {endpoint}: no model YAML in {where} deploys to it (pass --config PATH)")


# the job's variables for the window, and the options they come from
WINDOW_OPTIONS = {"start_time": "--since", "end_time": "--until"}


def run_monitor(
    home: StateHome,
    project: Project,
    config: ModelConfig,
    endpoint: str,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """One monitoring job over [since, until) (the job's defaults: until now, since `window_minutes`
    before); its summary, with where the report is. The job checks the times, as on AWS."""
    from pipelines.registry import VersionNotFound, find_version

    registered = project.registered_model(config.name)
    try:
        champion = find_version(home, registered, "champion")
    except VersionNotFound as error:
        raise MonitorError(f"{endpoint}: no champion to compare with: {error}") from None
    undelivered = 0
    if running_gateway(home) is not None:
        undelivered = await_delivery(home, endpoint, DELIVERY_WAIT_SECONDS)
    with tempfile.TemporaryDirectory() as scratch, LocalS3(home, project.region) as s3:
        work = Path(scratch)
        spool = spool_folder(home)
        if running_gateway(home) is None and spool.is_dir():  # a live gateway delivers its own (awaited above)
            recover(spool)  # a killed gateway's open files
            deliver(spool, s3.client)
        baseline = project.champion_baseline_uri(config.name)  # what the gate copied when it deployed the champion
        for name in ("statistics.json", "constraints.json"):
            if s3.read(f"{baseline}/{name}") is None:
                raise MonitorError(
                    f"{registered} version {champion['version']} (the champion) has no monitoring baseline: "
                    f"{baseline}/{name} is missing"
                )
            s3.download(f"{baseline}/{name}", work / "baseline" / name)
        evaluation = s3.read(project.champion_evaluation_uri(config.name))
        if evaluation is not None:
            (work / "evaluation.json").write_bytes(evaluation)
        output = work / "output"
        environment = {
            **os.environ,
            "dataset_source": f"{project.capture_uri}/{endpoint}",
            "output_path": str(output),
            "start_time": since or "",
            "end_time": until or "",
            "window_minutes": str(config.monitoring.window_minutes if config.monitoring else 60),
            "sagemaker_endpoint_name": endpoint,
            "baseline_statistics": str(work / "baseline" / "statistics.json"),
            "baseline_constraints": str(work / "baseline" / "constraints.json"),
            "feature_importance": str(work / "evaluation.json"),
            "publish_cloudwatch_metrics": "Disabled",  # recorded in the state folder instead
            "retrain_on_drift": "true" if config.monitoring and config.monitoring.retrain_on_drift else "false",
            "SAGEGATE_MONITOR_LIB": str(container_code("preprocess")),
        }
        result = subprocess.run(
            [sys.executable, str(container_code("monitor", "monitor.py"))],
            env=environment,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            message = lines[-1].removeprefix("ERROR: ") if lines else f"monitor exited {result.returncode}"
            for variable, option in WINDOW_OPTIONS.items():
                message = message.replace(variable, option)
            raise MonitorError(message)
        summary = json.loads((output / "summary.json").read_text())
        summary["baseline"] = {"version": champion["version"], "uri": baseline}
        summary["undelivered_captures"] = undelivered
        stamp = summary["end_time"].replace("-", "").replace(":", "")
        report_uri = f"{project.monitoring_reports_uri(endpoint)}/{stamp}"
        local = reports_folder(home, endpoint) / stamp
        summary["report"] = {"uri": report_uri, "path": str(local / "report.html")}
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        for name in REPORT_FILES:
            if (output / name).is_file():
                s3.upload(output / name, f"{report_uri}/{name}")
                write_bytes(local / name, (output / name).read_bytes())
        write_json(local / "summary.json", summary)
    return summary


def list_reports(home: StateHome, endpoint: str) -> list[dict[str, Any]]:
    """Past reports of an endpoint, oldest first, each with the name of its folder (`folder`)."""
    folder = reports_folder(home, endpoint)
    reports = []
    for path in sorted(folder.glob("*/summary.json")) if folder.is_dir() else []:
        summary = read_json(path)
        if isinstance(summary, dict):
            reports.append({**summary, "folder": path.parent.name})
    return reports
