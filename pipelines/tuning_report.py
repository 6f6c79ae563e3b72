"""What a tuned run's trials look like: a table, a plot, and MLflow runs (one parent, a child per trial).

The trials come from the run record (`RunRecord.tuning`, the tuning job's answers as rows), so the
CLI, the plot and MLflow show the same facts."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pipelines.registry import ensure_experiment
from pipelines.state import StateHome
from pipelines.statefiles import write_bytes


def trial_lines(tuning: dict[str, Any]) -> list[str]:
    """The trials table, in trial order, the best marked."""
    names = sorted({name for trial in tuning["trials"] for name in trial["hyperparameters"]})
    header = ["TRIAL", "STATUS", tuning["objective"].upper(), *[name.upper() for name in names], "SECONDS"]
    rows = [header]
    for trial in tuning["trials"]:
        objective = "-" if trial["objective"] is None else f"{trial['objective']:.6g}"
        best = "*" if trial["training_job"] == tuning["best_training_job"] else ""
        rows.append(
            [
                f"{trial['trial']}{best}",
                trial["status"],
                objective,
                *[str(trial["hyperparameters"].get(name, "")) for name in names],
                "-" if trial["seconds"] is None else f"{trial['seconds']:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    failed = [t for t in tuning["trials"] if t["failure_reason"]]
    lines += [f"trial {t['trial']}: {t['failure_reason']}" for t in failed]
    return lines


def plot(tuning: dict[str, Any], path: Path) -> Path:
    """Objective vs trial (with the best so far), and vs each tuned parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in tuning["trials"] if t["objective"] is not None]
    names = sorted({name for trial in tuning["trials"] for name in trial["hyperparameters"]})
    figure, axes = plt.subplots(1, 1 + len(names), figsize=(4 * (1 + len(names)), 3.5), squeeze=False)
    first = axes[0][0]
    numbers = [t["trial"] for t in scored]
    values = [t["objective"] for t in scored]
    first.scatter(numbers, values, label="trial")
    pick = max if tuning["goal"] == "Maximize" else min
    best_so_far = [pick(values[: i + 1]) for i in range(len(values))]
    first.step(numbers, best_so_far, where="post", color="grey", label="best so far")
    first.set(xlabel="trial", ylabel=tuning["objective"], title=f"{tuning['strategy']} search")
    first.legend(loc="best")
    for axis, name in zip(axes[0][1:], names, strict=True):
        points = [(t["hyperparameters"].get(name), t["objective"]) for t in scored]
        labels = [str(x) for x, _ in points]
        try:
            xs: list[Any] = [float(x) for x, _ in points]
        except (TypeError, ValueError):  # a categorical parameter: one column per value
            xs = labels
        axis.scatter(xs, [y for _, y in points])
        axis.set(xlabel=name, ylabel=tuning["objective"])
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=80)
    plt.close(figure)
    write_bytes(path, image.getvalue())  # atomic: `tuning show` and the run may write it at once
    return path


def log_to_mlflow(home: StateHome, experiment: str, run_id: str, tuning: dict[str, Any], plot_path: Path) -> str:
    """A parent run for the tuning job, a child per trial (params, objective, status); the parent's id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    ensure_experiment(home, experiment)  # artifacts in the state folder, as the register job's runs
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parent = client.create_run(
        experiment_id,
        run_name=f"tuning-{tuning['job']}",
        tags={
            "sagemaker.pipeline_execution_id": run_id,
            "sagemaker.tuning_job": tuning["job"],
            "sagemaker.training_job": tuning["best_training_job"],
        },
    )
    parent_id = parent.info.run_id
    client.log_param(parent_id, "strategy", tuning["strategy"])
    client.log_param(parent_id, "objective", f"{tuning['objective']} ({tuning['goal']})")
    client.log_param(parent_id, "trials", len(tuning["trials"]))
    best = next(t for t in tuning["trials"] if t["training_job"] == tuning["best_training_job"])
    client.log_metric(parent_id, "best_objective", best["objective"])
    for trial in tuning["trials"]:
        child = client.create_run(
            experiment_id,
            run_name=trial["training_job"],
            tags={
                "mlflow.parentRunId": parent_id,
                "sagemaker.training_job": trial["training_job"],
                "status": trial["status"],
                **({"failure_reason": trial["failure_reason"][:5000]} if trial["failure_reason"] else {}),
            },
        )
        for name, value in trial["hyperparameters"].items():
            client.log_param(child.info.run_id, name, value)
        if trial["objective"] is not None:
            client.log_metric(child.info.run_id, "objective", trial["objective"], step=trial["trial"])
            client.log_metric(parent_id, "objective", trial["objective"], step=trial["trial"])
        client.set_terminated(child.info.run_id, "FINISHED" if trial["status"] != "Failed" else "FAILED")
    client.log_artifact(parent_id, str(plot_path), artifact_path="tuning")
    client.set_terminated(parent_id)
    return parent_id
