"""Evaluation job: score the trained model on the held-out test split.

Writes `evaluation.json` in SageMaker's model-quality metrics format (the file the Model
Registry shows as ModelMetrics) plus a flat `metrics` section the pipeline's quality gate
reads with JsonGet, whatever the number of classes. Also draws the diagnostic plots.
Runs on the stock scikit-learn image: imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.utils.random import sample_without_replacement

IMPORTANCE_REPEATS = 3  # shuffles per feature (each costs a predict per feature: ~0.6 s on the bundled example)
IMPORTANCE_ROWS = 2000  # rows of the test split used at most (permutation importance costs a predict per shuffle)
IMPORTANCE_CELLS = 4_000_000  # shuffled copies' values scored per predict at most (~32 MB of float64)
# the model's answers on the test split, with the sha256 of the archive that answered: the register job checks
# its ONNX conversion against them instead of asking the forest again (two passes over the split)
ANSWERS = "test_answers.npz"


def fail(message: str) -> None:
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "message").write_text(message)
    sys.exit(f"ERROR: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="/opt/ml/processing/model")
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--output-dir", default="/opt/ml/processing/evaluation")
    return parser.parse_args(argv)


def load_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    archive = model_dir / "model.tar.gz"
    target = Path(tempfile.mkdtemp())
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # refuse path tricks where Python supports it
            tar.extractall(target, filter="data")
        else:  # pragma: no cover - older Python in older images
            tar.extractall(target)
    return joblib.load(target / "model.joblib"), json.loads((target / "metadata.json").read_text())


def stat(value: float) -> dict[str, Any]:
    return {"value": float(value), "standard_deviation": "NaN"}


def classification_report(
    model: Any, x: pd.DataFrame, y: pd.Series, classes: list[Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    predicted = model.predict(x)
    binary = len(classes) == 2
    average = "binary" if binary else "weighted"
    positive = classes[-1]
    kwargs = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = positive
    values = {
        "accuracy": skm.accuracy_score(y, predicted),
        "precision": skm.precision_score(y, predicted, **kwargs),
        "recall": skm.recall_score(y, predicted, **kwargs),
        "f1": skm.f1_score(y, predicted, **kwargs),
    }
    section: dict[str, Any] = {name: stat(value) for name, value in values.items()}
    matrix = skm.confusion_matrix(y, predicted, labels=classes)
    section["confusion_matrix"] = {
        str(actual): {str(pred): int(matrix[i][j]) for j, pred in enumerate(classes)}
        for i, actual in enumerate(classes)
    }
    plots: dict[str, Any] = {"confusion_matrix": (matrix, classes)}
    answers = {"predicted": labels_array(predicted)}
    if hasattr(model, "predict_proba"):
        proba = answers["probabilities"] = model.predict_proba(x)
        if binary:
            scores = proba[:, list(model.classes_).index(positive)]
            values["auc"] = skm.roc_auc_score(y == positive, scores)
            fpr, tpr, _ = skm.roc_curve(y == positive, scores)
            section["receiver_operating_characteristic_curve"] = {
                "false_positive_rates": fpr.round(6).tolist(),
                "true_positive_rates": tpr.round(6).tolist(),
            }
            plots["roc"] = (fpr, tpr, values["auc"])
        else:
            values["auc"] = skm.roc_auc_score(
                y, proba, multi_class="ovr", average="weighted", labels=list(model.classes_)
            )
        section["auc"] = stat(values["auc"])
    kind = "binary_classification_metrics" if binary else "multiclass_classification_metrics"
    return kind, section, {"values": values, "plots": plots, "answers": answers}


def regression_report(model: Any, x: pd.DataFrame, y: pd.Series) -> tuple[str, dict[str, Any], dict[str, Any]]:
    predicted = model.predict(x)
    mse = skm.mean_squared_error(y, predicted)
    values = {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": skm.mean_absolute_error(y, predicted),
        "r2": skm.r2_score(y, predicted),
    }
    plots = {"residuals": (np.asarray(predicted), np.asarray(y) - np.asarray(predicted))}
    extra = {"values": values, "plots": plots, "answers": {"predicted": np.asarray(predicted)}}
    return "regression_metrics", {name: stat(v) for name, v in values.items()}, extra


def labels_array(predicted: Any) -> np.ndarray:
    """Labels as an array NumPy saves without pickling: text labels (an object array) as strings."""
    labels = np.asarray(predicted)
    return labels.astype(str) if labels.dtype.kind == "O" else labels


def scores(model: Any, rows: pd.DataFrame, metadata: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The task's report on `rows` (the training job reports the same metrics on the validation split)."""
    x, y = rows[metadata["features"]], rows[metadata["target"]]
    if metadata["task"] == "classification":
        return classification_report(model, x, y, metadata["classes"])
    return regression_report(model, x, y)


def feature_importance(model: Any, rows: pd.DataFrame, metadata: dict[str, Any], baseline: float) -> dict[str, Any]:
    """scikit-learn's permutation importance on the test split: how much the task's score drops when one
    feature's values are shuffled (the drift report ranks drifted features by it). `baseline`: the task's
    score on the whole split, which `permutation_importance` would compute again."""
    features = metadata["features"]
    scoring = "accuracy" if metadata["task"] == "classification" else "r2"
    drops = baseline - permuted_scores(model, rows[features], rows[metadata["target"]], scoring)
    means, deviations = drops.mean(axis=1), drops.std(axis=1)
    order = np.argsort(-means, kind="stable")
    return {
        "method": "permutation",
        "scoring": scoring,
        "n_repeats": IMPORTANCE_REPEATS,
        "features": [
            {
                "name": features[i],
                "importance_mean": round(float(means[i]), 6),
                "importance_std": round(float(deviations[i]), 6),
            }
            for i in order
        ],
    }


def permuted_scores(model: Any, x: pd.DataFrame, y: pd.Series, scoring: str) -> np.ndarray:
    """The score with each feature shuffled, per feature and repeat: the rows and shuffles
    `sklearn.inspection.permutation_importance(..., n_repeats=IMPORTANCE_REPEATS, random_state=0,
    max_samples=IMPORTANCE_ROWS)` takes, so the same numbers (tests/test_container_jobs.py compares them),
    but every shuffled copy is scored by one `predict` per chunk of rows instead of one each: a forest's
    predict costs ~8 ms per call before its first row (~1 s of the evaluate job's 3 s at 200k rows)."""
    score = {"accuracy": skm.accuracy_score, "r2": skm.r2_score}[scoring]  # the scorers' functions
    state = np.random.RandomState(0)
    seed = state.randint(np.iinfo(np.int32).max + 1)  # each feature's shuffles start from it
    state = np.random.RandomState(seed)
    if len(x) > IMPORTANCE_ROWS:
        picked = sample_without_replacement(len(x), IMPORTANCE_ROWS, random_state=state)
        x, y = x.iloc[picked], y.iloc[picked]
    shuffles, order = [], np.arange(len(x))
    for _ in range(IMPORTANCE_REPEATS):
        state.shuffle(order)  # in place, as scikit-learn does: each repeat shuffles the last one's column
        shuffles.append(order.copy())
    copies = []
    for feature in x.columns:
        column = x[feature].to_numpy()
        for shuffle in shuffles:
            column = column[shuffle]
            copies.append(x.assign(**{feature: column}))
    per_chunk = max(1, IMPORTANCE_CELLS // max(1, x.size))  # copies per predict: bounded memory
    predicted = np.concatenate(
        [np.asarray(model.predict(pd.concat(copies[i : i + per_chunk]))) for i in range(0, len(copies), per_chunk)]
    )
    scores = [score(y, predicted[i * len(x) : (i + 1) * len(x)]) for i in range(len(copies))]
    return np.array(scores).reshape(len(x.columns), IMPORTANCE_REPEATS)


def draw(plots: dict[str, Any], output: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the stock image may lack matplotlib: metrics matter, plots are a bonus
        print("evaluate: matplotlib not installed, skipping plots")
        return []
    written = []
    for name, data in plots.items():
        figure, axes = plt.subplots(figsize=(6, 5) if name == "feature_importance" else (5, 4))
        if name == "confusion_matrix":
            matrix, classes = data
            skm.ConfusionMatrixDisplay(matrix, display_labels=classes).plot(ax=axes, colorbar=False)
        elif name == "feature_importance":
            ranked = data["features"][:15][::-1]  # the 15 most important, largest on top
            axes.barh([f["name"] for f in ranked], [f["importance_mean"] for f in ranked],
                      xerr=[f["importance_std"] for f in ranked])  # fmt: skip
            axes.set(xlabel=f"drop in {data['scoring']} when shuffled", title="Permutation importance")
        elif name == "roc":
            fpr, tpr, auc = data
            axes.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
            axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
            axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
            axes.legend(loc="lower right")
        else:
            predicted, residuals = data
            axes.scatter(predicted, residuals, s=8, alpha=0.6)
            axes.axhline(0, color="grey", linestyle="--")
            axes.set(xlabel="Predicted", ylabel="Residual (actual - predicted)", title="Residuals")
        figure.tight_layout()
        figure.savefig(output / f"{name}.png", dpi=80)
        plt.close(figure)
        written.append(f"{name}.png")
    return written


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model, metadata = load_model(Path(args.model_dir))
        archive_sha256 = hashlib.sha256((Path(args.model_dir) / "model.tar.gz").read_bytes()).hexdigest()
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError) as error:
        fail(f"cannot load the trained model from {args.model_dir}: {error}")
        return
    test = pd.read_csv(Path(args.test_dir) / "test.csv")
    kind, section, extra = scores(model, test, metadata)
    values = extra["values"]
    baseline = values["accuracy" if metadata["task"] == "classification" else "r2"]
    importance = feature_importance(model, test, metadata, baseline)
    extra["plots"]["feature_importance"] = importance
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        fail(f"metric(s) {', '.join(bad)} are not finite on the test split ({len(test)} rows)")
        return
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = {
        kind: section,
        "metrics": {name: {"value": round(float(value), 6)} for name, value in values.items()},
        "test_rows": len(test),
        "feature_importance": importance,
        "plots": draw(extra["plots"], output),
    }
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    np.savez(output / ANSWERS, model_sha256=np.array(archive_sha256), **extra["answers"])
    print("evaluate: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
