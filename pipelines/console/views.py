"""What each console page shows, read from the state folder through the modules that own each record.

Every path parameter is checked against NAME (letters, digits, `._-`, no `..`, at most 128) before
it reaches a file name, and a plot or report is served only if it is one its record lists.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from pipelines.execution_view import state_edges, state_rows
from pipelines.local.endpoint_status import endpoint_detail, endpoint_rows
from pipelines.local_gate import ExecutionRecord, GateError, list_executions, load_execution
from pipelines.local_run import RunRecord, attempt_logs, list_records, load_record
from pipelines.monitor import list_reports, reports_folder
from pipelines.registry import list_versions
from pipelines.state import Project, StateHome

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOG_TAIL_BYTES = 4096
PLOT_SUFFIX = ".png"


class NotFound(LookupError):
    """No record by that name (or not a name at all): the page answers 404."""


def checked(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise NotFound(f"{name[:80]!r} is not a name")
    return name


# ---- pipeline runs -------------------------------------------------------------------------------


def runs(home: StateHome) -> tuple[list[RunRecord], list[str]]:
    records, problems = list_records(home)
    return list(reversed(records)), problems


def run(home: StateHome, attempt: str) -> RunRecord:
    """One run by its attempt id (its record's name): one file read, however long the history."""
    try:
        return load_record(home, checked(attempt))
    except FileNotFoundError:
        raise NotFound(f"no pipeline run {attempt!r}") from None


def run_graph(record: RunRecord) -> dict[str, Any]:
    """Nodes (steps, with their status) and edges, as the SDK's executor built the execution's graph.
    A run recorded before its graph was (or by an older sagegate) shows its steps in order."""
    steps = {step.name: step for step in record.steps}
    graph = record.graph or {"steps": [{"name": s.name, "type": ""} for s in record.steps], "edges": []}
    if not record.graph:
        graph["edges"] = [[a.name, b.name] for a, b in itertools.pairwise(record.steps)]
    nodes = []
    for node in graph["steps"]:
        step = steps.get(node["name"])
        nodes.append(
            {
                "id": node["name"],
                "type": node["type"],
                "status": step.status if step else "NotStarted",
                "duration_seconds": step.duration_seconds if step else None,
                "failure_reason": step.failure_reason if step else None,
            }
        )
    finished = {name for name, step in steps.items() if step.status in ("Succeeded", "Failed")}
    edges = [{"from": a, "to": b, "taken": a in finished and b in steps} for a, b in _reduced(graph["edges"])]
    return {"nodes": nodes, "edges": edges}


def _reduced(edges: list[list[str]]) -> list[list[str]]:
    """Without the edges a longer path already implies (a step that reads both its parent's and its
    grandparent's outputs is drawn below its parent only)."""
    children: dict[str, set[str]] = {}
    for source, target in edges:
        children.setdefault(source, set()).add(target)

    def reachable(start: str, skip: str) -> set[str]:
        seen, todo = set(), [child for child in children.get(start, ()) if child != skip]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(children.get(node, ()))
        return seen

    return [[source, target] for source, target in edges if target not in reachable(source, target)]


def log_tails(home: StateHome, record: RunRecord) -> dict[str, str]:
    """The end of each step's newest job log (the same files `sagegate logs` reads)."""
    folder = attempt_logs(home, record.attempt or record.run_id)
    tails: dict[str, str] = {}
    for path in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []:
        step = path.name.split("-", 1)[0]
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            tails[step] = stream.read().decode(errors="replace")
    return tails


# ---- gate executions ------------------------------------------------------------------------------


def executions(home: StateHome) -> tuple[list[ExecutionRecord], list[str]]:
    records, problems = list_executions(home)
    return list(reversed(records)), problems


def execution(home: StateHome, name: str) -> ExecutionRecord:
    try:
        return load_execution(home, checked(name), exact=True)
    except GateError:
        raise NotFound(f"no gate execution {name!r}") from None


def execution_graph(record: ExecutionRecord) -> dict[str, Any]:
    """The state machine's states and transitions, with the path this execution took."""
    rows = state_rows(record)
    visited = {row["state"]: row["status"] for row in rows}
    taken = {(a["state"], b["state"]) for a, b in itertools.pairwise(rows)}
    states = record.definition.get("States", {})
    start = record.definition.get("StartAt")
    nodes = [{"id": name, "type": state.get("Type", ""), "status": visited.get(name, "NotStarted")}
             for name, state in states.items()]  # fmt: skip
    edges = [{"from": a, "to": b, "taken": (a, b) in taken} for a, b in state_edges(record.definition)]
    return {"nodes": nodes, "edges": edges, "start": start}


# ---- models, endpoints, monitoring ---------------------------------------------------------------


def models(home: StateHome) -> tuple[list[dict[str, Any]], list[str]]:
    rows, problems = list_versions(home)
    return list(reversed(rows)), problems


def model_version(home: StateHome, name: str, version: str) -> dict[str, Any]:
    checked(name)
    for row in list_versions(home)[0]:
        if row["name"] == name and row["version"] == version:
            return row
    raise NotFound(f"no version {version!r} of model {name!r}")


def plots(home: StateHome, row: dict[str, Any]) -> list[str]:
    """The evaluation plots the register job logged with this version's MLflow run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    return sorted(
        Path(item.path).name for item in client.list_artifacts(row["run_id"], "evaluation")
        if item.path.endswith(PLOT_SUFFIX)
    )  # fmt: skip


def plot(home: StateHome, row: dict[str, Any], file: str, scratch: Path) -> Path:
    """One of `plots`, downloaded from the run's artifacts (only a listed name is ever fetched)."""
    import mlflow

    if file not in plots(home, row):
        raise NotFound(f"no plot {file[:80]!r} for {row['name']} version {row['version']}")
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    return Path(client.download_artifacts(row["run_id"], f"evaluation/{file}", str(scratch)))


def endpoints(home: StateHome, project: Project) -> tuple[list[dict[str, Any]], list[str]]:
    return endpoint_rows(home, project)


def endpoint(home: StateHome, project: Project, name: str) -> tuple[dict[str, Any], list[str]]:
    checked(name)
    try:
        return endpoint_detail(home, project, name)
    except ValueError as error:
        raise NotFound(str(error)) from None


def reports(home: StateHome, name: str) -> list[dict[str, Any]]:
    """Monitoring reports of an endpoint, newest first."""
    return list(reversed(list_reports(home, checked(name))))


def report_file(home: StateHome, name: str, folder: str) -> Path:
    """A report's report.html, when that report exists."""
    checked(name)
    checked(folder)
    if not any(report["folder"] == folder for report in list_reports(home, name)):
        raise NotFound(f"no monitoring report {folder!r} for {name!r}")
    path = reports_folder(home, name) / folder / "report.html"
    if not path.is_file():
        raise NotFound(f"the report {folder!r} for {name!r} has no report.html")
    return path
