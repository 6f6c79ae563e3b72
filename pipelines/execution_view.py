"""What the Step Functions console shows for an execution: states in order, and the graph.

Both are derived from the AWS-shaped execution history kept in the execution record, so the
view is the same whether the history came from moto locally or from AWS.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.local_gate import ExecutionRecord, json_or_text


def state_rows(record: ExecutionRecord) -> list[dict[str, Any]]:
    """One row per state visited: name, type, status, input, output, error, duration."""
    rows: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in record.events:
        kind = event["type"]
        entered = event.get("stateEnteredEventDetails")
        exited = event.get("stateExitedEventDetails")
        failure = next((v for k, v in event.items() if k.endswith("FailedEventDetails") and isinstance(v, dict)), None)
        if entered:
            current = {
                "state": entered["name"],
                "type": kind.removesuffix("StateEntered"),
                "status": "Succeeded",
                "input": json_or_text(entered.get("input")),
                "output": None,
                "error": None,
                "cause": None,
                "started": event["timestamp"],
                "duration_seconds": None,
            }
            rows.append(current)
        elif current and failure and not kind.startswith("Execution"):
            current.update(status="Caught" if kind == "TaskFailed" else "Failed", error=failure.get("error"))
            current["cause"] = failure.get("cause")
        elif current and exited:
            current["output"] = json_or_text(exited.get("output"))
            current["duration_seconds"] = _seconds(current["started"], event["timestamp"])
        elif kind == "ExecutionFailed" and rows:
            rows[-1].update(status="Failed", error=failure.get("error"), cause=failure.get("cause"))
            rows[-1]["duration_seconds"] = _seconds(rows[-1]["started"], event["timestamp"])
    return rows


def _seconds(start: str, end: str) -> float:
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


def state_edges(definition: dict[str, Any]) -> list[tuple[str, str]]:
    edges = []
    for name, state in definition["States"].items():
        targets = [state.get("Next"), state.get("Default")]
        targets += [choice.get("Next") for choice in state.get("Choices", [])]
        targets += [catch.get("Next") for catch in state.get("Catch", [])]
        edges += [(name, target) for target in targets if target]
    return list(dict.fromkeys(edges))


def _layers(definition: dict[str, Any]) -> dict[str, int]:
    """Longest-path depth from StartAt, ignoring back edges (the polling loops)."""
    depth = {definition["StartAt"]: 0}
    order = [definition["StartAt"]]
    edges = state_edges(definition)
    for node in order:
        for source, target in edges:
            if source == node and target not in depth:
                depth[target] = depth[node] + 1
                order.append(target)
    return depth


def render_graph(record: ExecutionRecord, path: Path) -> Path:
    """Write the state machine as a PNG with the states this execution visited highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    definition = record.definition
    depth = _layers(definition)
    rows = state_rows(record)
    visited = {row["state"]: row["status"] for row in rows}
    taken = {(a["state"], b["state"]) for a, b in itertools.pairwise(rows)}
    by_layer: dict[int, list[str]] = {}
    for name, level in depth.items():
        by_layer.setdefault(level, []).append(name)
    position = {}
    for level, names in by_layer.items():
        for index, name in enumerate(names):
            position[name] = (index - (len(names) - 1) / 2, -level)
    width = max(len(names) for names in by_layer.values())
    figure, axes = plt.subplots(figsize=(max(8, 3.2 * width), 0.9 * (len(by_layer) + 1)))
    for source, target in state_edges(definition):
        if source not in position or target not in position:
            continue
        (x1, y1), (x2, y2) = position[source], position[target]
        on_path = (source, target) in taken
        axes.annotate(
            "",
            xy=(x2, y2 + 0.18),
            xytext=(x1, y1 - 0.18),
            arrowprops={
                "arrowstyle": "->",
                "color": "#1a7f37" if on_path else "#c0c0c0",
                "lw": 2.2 if on_path else 0.8,
                "connectionstyle": "arc3,rad=0.25" if y2 >= y1 else "arc3,rad=0.0",
            },
        )
    colours = {"Succeeded": "#d1f5d3", "Caught": "#fff1c2", "Failed": "#ffd6d6"}
    for name, (x, y) in position.items():
        status = visited.get(name)
        axes.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold" if status else "normal",
            bbox={
                "boxstyle": "round,pad=0.35",
                "facecolor": colours.get(status or "", "#f4f4f4"),
                "edgecolor": "#444444" if status else "#bbbbbb",
            },
        )
    axes.set_xlim(-width / 2 - 0.6, width / 2 + 0.6)
    axes.set_ylim(-len(by_layer), 0.7)
    axes.axis("off")
    axes.set_title(f"{record.name}: {record.status} ({record.verdict})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
