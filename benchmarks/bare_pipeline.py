"""Baseline for benchmarks/e2e.py: the same preprocessing, training and evaluation in one process.

No SageMaker, no jobs, no registry: the floor that `sagegate run` is compared against.
"""

from __future__ import annotations

import sys

import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main(path: str) -> None:
    frame = pd.read_csv(path)
    features = [c for c in frame.columns if c != "label"]
    frame[features] = frame[features].apply(pd.to_numeric).astype("float64")
    rest, test = train_test_split(frame, test_size=0.2, random_state=42, stratify=frame["label"])
    train, _ = train_test_split(rest, test_size=0.125, random_state=42, stratify=rest["label"])
    model = Pipeline(
        [("scale", StandardScaler()), ("model", RandomForestClassifier(n_estimators=100, max_depth=5, random_state=42))]
    )
    model.fit(train[features], train["label"])
    predicted = model.predict(test[features])
    scores = model.predict_proba(test[features])[:, 1]
    print(
        accuracy_score(test["label"], predicted),
        f1_score(test["label"], predicted),
        precision_score(test["label"], predicted),
        recall_score(test["label"], predicted),
        roc_auc_score(test["label"], scores),
    )


if __name__ == "__main__":
    main(sys.argv[1])
