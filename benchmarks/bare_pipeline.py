"""Baseline for benchmarks/e2e.py: the same preprocessing, training and evaluation in one process.

No SageMaker, no jobs, no registry: the floor that `sagegate run` is compared against.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main(path: str, trees: int = 100, depth: int = 5) -> float:
    """Prints the scores; returns the seconds `fit` took (the same work as the run's train job)."""
    frame = pd.read_csv(path)
    features = [c for c in frame.columns if c != "label"]
    frame[features] = frame[features].apply(pd.to_numeric).astype("float64")
    rest, test = train_test_split(frame, test_size=0.2, random_state=42, stratify=frame["label"])
    train, _ = train_test_split(rest, test_size=0.125, random_state=42, stratify=rest["label"])
    forest = RandomForestClassifier(n_estimators=trees, max_depth=depth, random_state=42)
    model = Pipeline([("scale", StandardScaler()), ("model", forest)])
    fitting = time.perf_counter()
    model.fit(train[features], train["label"])
    fit_seconds = time.perf_counter() - fitting
    predicted = model.predict(test[features])
    scores = model.predict_proba(test[features])[:, 1]
    print(
        accuracy_score(test["label"], predicted),
        f1_score(test["label"], predicted),
        precision_score(test["label"], predicted),
        recall_score(test["label"], predicted),
        roc_auc_score(test["label"], scores),
    )
    return fit_seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--fit-seconds-to", type=Path, help="write the fit's seconds to this file")
    args = parser.parse_args()
    seconds = main(args.csv, args.trees, args.depth)
    if args.fit_seconds_to:
        args.fit_seconds_to.write_text(f"{seconds:.3f}")
