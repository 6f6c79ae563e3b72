"""Training job (scikit-learn script mode): fit the configured estimator in a sklearn Pipeline.

SageMaker passes hyperparameters as `--name value` arguments and the channels as
`SM_CHANNEL_*` folders; the model goes to `SM_MODEL_DIR` and becomes model.tar.gz.
With checkpoints (the folder `/opt/ml/checkpoints` exists: SageMaker creates it for a
CheckpointConfig, the local runner sets SM_CHECKPOINT_DIR), an ensemble that can grow
(`n_estimators` + `warm_start`: forests, gradient boosting, bagging) is fitted in tenths and
saved after each; a restarted job (spot interruption, a killed local run) continues from the
last one when the data and settings are the same.
With a validation channel the job prints the task's metrics on it (`validation:auc=0.98;`): the
lines a hyperparameter tuner's MetricDefinitions match (the last match counts). With
SAGEGATE_STAGED_METRICS=1 (set by the definition for Hyperband) a growing ensemble is fitted in
tenths and reports after each, the per-epoch objective Hyperband stops trials on.
Runs on the project's runtime image (and locally in the same environment): imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# What loading the pickled model depends on: recorded with it, so the gate deploys it only onto
# an image with the same versions.
LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib")
STAGED_METRICS = "SAGEGATE_STAGED_METRICS"


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
    parser.add_argument(
        "--validation", default=os.environ.get("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation")
    )
    parser.add_argument("--checkpoint-dir", default=os.environ.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    args, rest = parser.parse_known_args(argv)
    if len(rest) % 2:
        raise TrainingError(f"hyperparameters must come as --name value pairs, got {rest}")
    hyperparameters = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        if not flag.startswith("--"):
            raise TrainingError(f"unexpected argument {flag!r}")
        if not flag.startswith("--_"):  # SageMaker's own (a tuner adds `_tuning_objective_metric`)
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


def read_rows(path: Path, features: list[str], target: str) -> tuple[np.ndarray, pd.Series]:
    """The features as one float64 array and the target, read in chunks into an array sized from the lines.

    Its peak is the array plus one chunk: a parsed frame would hold the data twice while its
    chunks are joined, and the scaler's copy of it a third time (1M-row example: ~350 -> ~170 MB).
    """
    with path.open("rb") as file:
        ends = 0
        last = b""
        for block in iter(lambda: file.read(1 << 24), b""):
            ends, last = ends + block.count(b"\n"), block[-1:]
    bound = max(ends - (last == b"\n"), 0)  # one line is the header; a data line can end the file unterminated
    # Fortran order, as the scaler's output from a frame is: the forest's float32 copy keeps it
    values = np.empty((bound, len(features)), dtype="float64", order="F")
    targets, filled = [], 0
    for chunk in pd.read_csv(path, chunksize=100_000):
        values[filled : filled + len(chunk)] = chunk[features].to_numpy(dtype="float64")
        targets.append(chunk[target])
        filled += len(chunk)
    if not targets:
        raise TrainingError(f"{path} has no rows")
    return values[:filled], pd.concat(targets, ignore_index=True)


def scale_in_place(model: Pipeline, features: np.ndarray, names: list[str]) -> np.ndarray:
    """Fit the pipeline's scaler and scale `features` in place: what `Pipeline.fit` hands the estimator.

    The scaler learns the column names from a read-only frame over the array, as from the frame
    it is given at prediction time; the fitted pipeline is the one `Pipeline.fit` would make.
    """
    scaler = model.named_steps["scale"]
    scaler.fit(pd.DataFrame(features, columns=names, copy=False))
    with warnings.catch_warnings():  # the array is the frame it was fitted on, without the names
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return scaler.transform(features, copy=False)


def grows(model: Pipeline) -> bool:
    """An ensemble that warm_start can extend tree by tree (and so checkpoint part-way)."""
    params = model.named_steps["model"].get_params()
    return "warm_start" in params and isinstance(params.get("n_estimators"), int)


def fingerprint(args: argparse.Namespace, hyperparameters: dict[str, Any], train_csv: Path) -> str:
    """What a checkpoint was made from: resuming needs the same data, class and settings."""
    digest = hashlib.sha256(train_csv.read_bytes())
    settings = {k: v for k, v in hyperparameters.items() if k != "n_estimators"}
    digest.update(json.dumps([args.model_class, settings], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save_checkpoint(folder: Path, model: Pipeline, made_from: str, done: int) -> None:
    """Model first, then the record naming it; each written beside and renamed into place."""
    partial = folder / ".model.joblib.partial"
    joblib.dump(model, partial)
    os.replace(partial, folder / "model.joblib")
    record = folder / ".checkpoint.json.partial"
    record.write_text(json.dumps({"fingerprint": made_from, "n_estimators": done}))
    os.replace(record, folder / "checkpoint.json")


def fit_in_stages(
    model: Pipeline,
    scaled: np.ndarray,
    target: Any,
    folder: Path | None,
    made_from: str,
    after_stage: Callable[[Pipeline], None] | None = None,
) -> Pipeline:
    """Grow the ensemble in tenths; after each, checkpoint it (when `folder`) and call `after_stage`.

    `scaled` is `scale_in_place`'s output with `model`'s scaler; a checkpoint's scaler was fitted
    on the same data (its fingerprint says so), so either scaler goes with it.
    """
    total = model.named_steps["model"].get_params()["n_estimators"]
    done = 0
    record = folder / "checkpoint.json" if folder else None
    if folder and record and record.is_file() and (folder / "model.joblib").is_file():
        saved = json.loads(record.read_text())
        if saved.get("fingerprint") == made_from and 0 < saved.get("n_estimators", 0) <= total:
            model, done = joblib.load(folder / "model.joblib"), saved["n_estimators"]
            print(f"train: resumed from checkpoint at {done}/{total} estimators")
        else:
            print("train: the checkpoint is of other data or settings: starting over")
    estimator = model.named_steps["model"]
    warm_start = estimator.get_params()["warm_start"]
    step = max(1, math.ceil(total / 10))
    while done < total:
        done = min(total, done + step)
        estimator.set_params(n_estimators=done, warm_start=True)
        estimator.fit(scaled, target)
        if folder:
            save_checkpoint(folder, model, made_from, done)
            print(f"train: checkpoint at {done}/{total} estimators", flush=True)
        if after_stage:
            after_stage(model)
    estimator.set_params(warm_start=warm_start)
    return model


def validation_reporter(folder: Path, schema: dict[str, Any]) -> Callable[[Pipeline], None] | None:
    """Prints the task's metrics on the validation split (None when the job has no validation rows)."""
    path = folder / "validation.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    if rows.empty:
        return None
    try:
        from evaluate import scores  # shipped beside this script (the estimator's `dependencies`)
    except ImportError:  # run from the source tree, where the evaluate job is a sibling folder
        sys.path.append(str(Path(__file__).resolve().parent.parent / "evaluate"))
        from evaluate import scores

    def report(model: Pipeline) -> None:
        values = scores(model, rows, schema)[2]["values"]
        print("metrics: " + " ".join(f"validation:{name}={float(v):.6g};" for name, v in values.items()), flush=True)

    return report


def main(argv: list[str] | None = None) -> None:
    try:
        args, hyperparameters = parse_args(argv)
        schema = json.loads((Path(args.schema) / "schema.json").read_text())
        train_csv = Path(args.train) / "train.csv"
        features, target = read_rows(train_csv, schema["features"], schema["target"])
        model = build_estimator(args.model_class, hyperparameters)
        scaled = scale_in_place(model, features, schema["features"])
        report = validation_reporter(Path(args.validation), schema)
        checkpoints = Path(args.checkpoint_dir)
        staged = report is not None and os.environ.get(STAGED_METRICS) == "1"
        fitting = time.perf_counter()
        if grows(model) and (checkpoints.is_dir() or staged):
            model = fit_in_stages(
                model,
                scaled,
                target,
                checkpoints if checkpoints.is_dir() else None,
                fingerprint(args, hyperparameters, train_csv),
                report if staged else None,
            )
        else:
            model.named_steps["model"].fit(scaled, target)
        fit_seconds = time.perf_counter() - fitting
        if report is not None:
            report(model)  # the final value: the last match is the job's objective
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
    # compressed here, in the job's own process: the archive step that follows (SageMaker's, or the SDK's
    # in local mode, gzip level 9 in the caller) then takes ~0.07 s instead of ~2.5 s for a 10 MB forest
    joblib.dump(model, model_dir / "model.joblib", compress=1)
    metadata = {
        **schema,
        "model_class": args.model_class,
        "hyperparameters": hyperparameters,
        "libraries": {library: version(library) for library in LIBRARIES},
    }
    (model_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    print(f"train: fitted {args.model_class} on {len(target)} rows with {hyperparameters} in {fit_seconds:.2f} s")


if __name__ == "__main__":
    main()
