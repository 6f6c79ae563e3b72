"""Training job (scikit-learn script mode): fit the configured estimator in a sklearn Pipeline.

SageMaker passes hyperparameters as `--name value` arguments and the channels as
`SM_CHANNEL_*` folders; the model goes to `SM_MODEL_DIR` and becomes model.tar.gz.
Runs on the project's runtime image (and locally in the same environment): imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# What loading the pickled model depends on: recorded with it, so the gate deploys it only onto
# an image with the same versions.
LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib")


class TrainingError(Exception):
    """A configuration or data problem that makes training impossible."""


def fail(message: str) -> None:
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "failure").write_text(message)
    sys.exit(f"ERROR: {message}")


def decode(value: str) -> Any:
    """SageMaker hands every hyperparameter over as text; recover numbers, booleans and null."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(value, value)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_class", required=True)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument("--schema", default=os.environ.get("SM_CHANNEL_SCHEMA", "/opt/ml/input/data/schema"))
    args, rest = parser.parse_known_args(argv)
    if len(rest) % 2:
        raise TrainingError(f"hyperparameters must come as --name value pairs, got {rest}")
    hyperparameters = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        if not flag.startswith("--"):
            raise TrainingError(f"unexpected argument {flag!r}")
        hyperparameters[flag[2:]] = decode(value)
    return args, hyperparameters


def build_estimator(dotted: str, hyperparameters: dict[str, Any]) -> Pipeline:
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name.startswith("sklearn."):
        raise TrainingError(f"model_class {dotted!r}: only scikit-learn estimators are allowed")
    try:
        estimator = getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError):
        raise TrainingError(f"model_class {dotted!r}: no such scikit-learn estimator") from None
    known = estimator.get_params()
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise TrainingError(f"hyperparameter(s) {', '.join(unknown)} not accepted by {class_name}")
    try:
        estimator.set_params(**hyperparameters)
        if hasattr(estimator, "_validate_params"):
            estimator._validate_params()
    except (ValueError, TypeError) as error:
        raise TrainingError(f"bad hyperparameter for {class_name}: {error}") from None
    return Pipeline([("scale", StandardScaler()), ("model", estimator)])


def main(argv: list[str] | None = None) -> None:
    try:
        args, hyperparameters = parse_args(argv)
        schema = json.loads((Path(args.schema) / "schema.json").read_text())
        train = pd.read_csv(Path(args.train) / "train.csv")
        model = build_estimator(args.model_class, hyperparameters)
        model.fit(train[schema["features"]], train[schema["target"]])
    except TrainingError as error:
        fail(str(error))
        return
    except (OSError, KeyError, json.JSONDecodeError) as error:
        fail(f"training inputs are incomplete: {error}")
        return
    except ValueError as error:  # sklearn refuses data or a parameter combination at fit time
        fail(f"training {args.model_class} failed: {error}")
        return
    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_dir / "model.joblib")
    metadata = {
        **schema,
        "model_class": args.model_class,
        "hyperparameters": hyperparameters,
        "libraries": {library: version(library) for library in LIBRARIES},
    }
    (model_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    print(f"train: fitted {args.model_class} on {len(train)} rows with {hyperparameters}")


if __name__ == "__main__":
    main()
