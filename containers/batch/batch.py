"""Batch inference job: predictions for every CSV under an input folder, streamed chunk by chunk.

The daily inference job. On AWS it runs as the inference pipeline's processing step (stock
scikit-learn image; inputs under /opt/ml/processing/); locally `sagegate predict` runs this same
script. Memory stays flat with file size: each file is read, predicted and written in chunks.
Output: one CSV per input file with the input's columns plus `prediction` (and, for
classifiers, `probability_<class>` columns). Imports nothing from `pipelines/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import joblib
import pandas as pd


def fail(message: str) -> None:
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "message").write_text(message)
    sys.exit(f"ERROR: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default="/opt/ml/processing/model", help="holds model.tar.gz")
    parser.add_argument("--input-dir", default="/opt/ml/processing/input")
    parser.add_argument("--output-dir", default="/opt/ml/processing/output")
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--probabilities", action="store_true")
    return parser.parse_args(argv)


def load_model(model_dir: Path) -> tuple[Any, dict]:
    archive = model_dir / "model.tar.gz"
    if archive.is_file():
        target = Path(tempfile.mkdtemp())
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # pragma: no cover - older Python in older images
                tar.extractall(target)
        model_dir = target
    metadata_path = model_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    return joblib.load(model_dir / "model.joblib"), metadata


def predict_file(model: Any, metadata: dict, source: Path, target: Path, chunk_rows: int, probabilities: bool) -> int:
    features = metadata.get("features") or list(getattr(model, "feature_names_in_", []))
    written = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise ValueError(f"{source.name}: duplicate column name(s) in the header: {', '.join(duplicates)}")
        chunks = pd.read_csv(source, chunksize=chunk_rows, encoding="utf-8-sig")
        for index, chunk in enumerate(chunks):
            missing = [f for f in features if f not in chunk.columns]
            if missing:
                raise ValueError(f"{source.name}: missing feature column(s) {', '.join(missing[:5])}")
            rows = chunk[features]
            bad = rows.apply(pd.to_numeric, errors="coerce").isna() & ~rows.isna()
            if bad.any().any():
                column = bad.any()[bad.any()].index[0]
                row = int(bad[column].to_numpy().nonzero()[0][0]) + index * chunk_rows + 1
                raise ValueError(f"{source.name}: column {column!r} has a non-numeric value at data row {row}")
            if rows.isna().any().any():
                column = rows.columns[rows.isna().any()][0]
                row = int(rows[column].isna().to_numpy().nonzero()[0][0]) + index * chunk_rows + 1
                raise ValueError(f"{source.name}: column {column!r} is empty at data row {row}")
            out = chunk.copy()
            out["prediction"] = model.predict(rows.astype(float))
            if probabilities and hasattr(model, "predict_proba"):
                for column, values in zip(model.classes_, model.predict_proba(rows.astype(float)).T, strict=True):
                    out[f"probability_{column}"] = values
            out.to_csv(partial, mode="a", header=index == 0, index=False)
            written += len(out)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        partial.unlink(missing_ok=True)
        raise ValueError(f"{source.name}: not a readable CSV: {error}") from None
    except ValueError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(target)
    return written


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model, metadata = load_model(Path(args.model_dir))
    except (OSError, tarfile.TarError, ValueError) as error:
        fail(f"batch: cannot load the model from {args.model_dir}: {error}")
        return
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    sources = sorted(input_dir.rglob("*.csv")) if input_dir.is_dir() else [input_dir]
    if not sources or not sources[0].exists():
        fail(f"batch: no CSV files under {input_dir}")
        return
    total = 0
    for source in sources:
        relative = source.relative_to(input_dir) if input_dir.is_dir() else Path(source.name)
        try:
            count = predict_file(model, metadata, source, output_dir / relative, args.chunk_rows, args.probabilities)
        except ValueError as error:
            fail(f"batch: {error}")
            return
        print(f"batch: {relative}: {count} predictions")
        total += count
    print(f"batch: {total} predictions for {len(sources)} file(s) in {output_dir}")


if __name__ == "__main__":
    main()
