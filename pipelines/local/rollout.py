"""An inference component's rolling update, run locally the way SageMaker runs it.

`UpdateInferenceComponent` with a `DeploymentConfig` (what the gate sends for `rollout: canary |
linear`) starts a rollout: the new version takes `MaximumBatchSize` percent of the traffic, that
batch bakes `WaitIntervalInSeconds` while the `AutoRollbackConfiguration` alarms watch the new
version's live traffic, then the next batch moves, until all of it has. An alarm in the ALARM state
(or the `MaximumExecutionTimeoutInSeconds` passing) rolls all traffic back to the serving version.
The control plane advances the rollout when it is described (the gate polls), and the gateway routes
each request by the share of the batch the control plane has started (`current_share`), so no batch
moves before the one before it has baked with every alarm OK.

Alarms are evaluated on the gateway's counters of the new version (`serving/metrics.json`, written
four times a second) since the rollout started: an error-rate alarm (`Invocations` with the 4XX/5XX
error counts, the gate's metric math) and a p99 latency alarm (`ModelLatency`, in milliseconds
after the gate's `/ 1000`). $SAGEGATE_TIME_SCALE scales the waits (tests); nothing is skipped.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

TIME_SCALE_VARIABLE = "SAGEGATE_TIME_SCALE"


def _scale() -> float:
    return float(os.environ.get(TIME_SCALE_VARIABLE, "1"))


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def start(
    current_model: str, new_model: str, deployment_config: dict[str, Any], counts: dict[str, Any], now: float
) -> dict[str, Any]:
    """The rollout record kept on the component: its policy, alarms, baseline counts and batches."""
    policy = deployment_config.get("RollingUpdatePolicy") or {}
    batch = policy.get("MaximumBatchSize") or {}
    if batch.get("Type", "CAPACITY_PERCENT") != "CAPACITY_PERCENT" or not 5 <= int(batch.get("Value", 0)) <= 50:
        raise ValueError("RollingUpdatePolicy.MaximumBatchSize must be CAPACITY_PERCENT between 5 and 50")
    alarms = [
        alarm["AlarmName"] for alarm in (deployment_config.get("AutoRollbackConfiguration") or {}).get("Alarms", [])
    ]
    return {
        "From": current_model,
        "To": new_model,
        "BatchPercent": int(batch["Value"]),
        "WaitSeconds": float(policy.get("WaitIntervalInSeconds", 0)) * _scale(),
        "TimeoutSeconds": float(policy.get("MaximumExecutionTimeoutInSeconds", 28800)) * _scale(),
        "Alarms": alarms,
        "Baseline": {"invocations": counts.get("invocations", 0), "errors": counts.get("errors", 0)},
        "StartedAt": now,
        "Status": "InProgress",
        "Batches": [{"Share": int(batch["Value"]), "StartedAt": _stamp(now), "Started": now, "Alarms": "OK"}],
        "Reason": None,
    }


def current_share(rollout: dict[str, Any]) -> float:
    """The share of traffic (0-1) the new version takes now: the batch the control plane started."""
    if rollout.get("Status") != "InProgress":
        return 0.0
    return rollout["Batches"][-1]["Share"] / 100


def alarm_value(alarm: dict[str, Any], counts: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """What the alarm's metric reads on the new version's traffic; None when it has no data."""
    names = {query.get("MetricStat", {}).get("Metric", {}).get("MetricName") for query in alarm.get("Metrics", [])}
    names.add(alarm.get("MetricName"))
    if "ModelLatency" in names:
        return counts.get("p99_ms")
    invocations = counts.get("invocations", 0) - baseline["invocations"]
    if "Invocations" in names and invocations > 0:
        return (counts.get("errors", 0) - baseline["errors"]) / invocations
    return None


def advance(rollout: dict[str, Any], alarms: dict[str, dict[str, Any]], counts: dict[str, Any], now: float) -> str:
    """Evaluate the alarms, then start the next batch once this one has baked; returns the status
    (InProgress, Completed or RolledBack, with `Reason` naming the alarm and the share it hit)."""
    if rollout["Status"] != "InProgress":
        return rollout["Status"]
    batch = rollout["Batches"][-1]
    for name in rollout["Alarms"]:
        alarm = alarms.get(name)
        value = alarm_value(alarm, counts, rollout["Baseline"]) if alarm else None
        if value is not None and value > float(alarm["Threshold"]):
            batch["Alarms"] = f"ALARM: {name}"
            reason = f"alarm {name} fired ({value:.4g} > {alarm['Threshold']}) with {batch['Share']}% of traffic"
            return _roll_back(rollout, f"{reason} on {rollout['To']}", now)
    if now - rollout["StartedAt"] > rollout["TimeoutSeconds"]:
        return _roll_back(rollout, f"MaximumExecutionTimeoutInSeconds ({rollout['TimeoutSeconds']:.0f} s) passed", now)
    if now - batch["Started"] < rollout["WaitSeconds"]:
        return "InProgress"
    if batch["Share"] >= 100:
        rollout.update(Status="Completed", EndedAt=_stamp(now))
        return "Completed"
    share = min(100, batch["Share"] + rollout["BatchPercent"])
    rollout["Batches"].append({"Share": share, "StartedAt": _stamp(now), "Started": now, "Alarms": "OK"})
    return "InProgress"


def _roll_back(rollout: dict[str, Any], reason: str, now: float) -> str:
    rollout.update(Status="RolledBack", Reason=f"Rolled back: {reason}", EndedAt=_stamp(now))
    return "RolledBack"
