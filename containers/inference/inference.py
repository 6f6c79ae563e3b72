"""Inference handlers: SageMaker's scikit-learn serving contract (model_fn, input_fn, predict_fn, output_fn).

The stock scikit-learn image calls these through its own server; `serve.py` (this folder's
custom-image entry point, and the local endpoints' model server) calls the same functions.
A model whose archive says `serving.json: {"runtime": "onnx"}` (the register job verified its
conversion on the test split) is answered by ONNX Runtime, one thread per worker; any other by
the scikit-learn pipeline. Imports nothing from `pipelines/`; runs on Python 3.8+.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import joblib
import numpy as np
import orjson

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker realtime payload limit


class RequestError(ValueError):
    """The request cannot be served as sent: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Model:
    """The fitted pipeline with what serving needs to know about it (from metadata.json)."""

    runtime = "sklearn"

    def __init__(self, estimator: Any, metadata: dict[str, Any]) -> None:
        self.estimator = estimator
        self.features: list[str] = list(metadata.get("features") or getattr(estimator, "feature_names_in_", []))
        self.task: str = metadata.get("task", "classification" if hasattr(estimator, "classes_") else "regression")
        self.classes: list[Any] = list(getattr(estimator, "classes_", metadata.get("classes") or []))
        for step in getattr(estimator, "steps", [("model", estimator)]):
            if getattr(step[1], "n_jobs", None) not in (None, 1):
                step[1].n_jobs = None  # a process pool per one-row request costs ~20 ms

    def predict(self, rows: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.features:
            import pandas as pd

            frame: Any = pd.DataFrame(rows, columns=self.features)
        else:
            frame = rows
        labels = self.estimator.predict(frame)
        if probabilities and self.task == "classification" and hasattr(self.estimator, "predict_proba"):
            return labels, self.estimator.predict_proba(frame)
        return labels, None


class OnnxModel(Model):
    """The verified ONNX conversion of the pipeline, run by ONNX Runtime on one thread: the server's
    workers are the parallelism, and a thread pool per request would cost more than a small model."""

    runtime = "onnx"

    def __init__(self, path: str, metadata: dict[str, Any]) -> None:
        import onnxruntime

        super().__init__(None, metadata)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        (source,) = self.session.get_inputs()
        self.input_name = source.name
        self.input_type = np.float64 if source.type == "tensor(double)" else np.float32
        self.outputs = [output.name for output in self.session.get_outputs()]

    def predict(self, rows: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        wanted = self.outputs if probabilities and self.task == "classification" else self.outputs[:1]
        results = self.session.run(wanted, {self.input_name: rows.astype(self.input_type, copy=False)})
        return results[0].ravel(), results[1] if len(results) > 1 else None


def model_fn(model_dir: str) -> Model:
    def read(name: str) -> dict[str, Any]:
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            return {}
        with open(path) as stream:
            return json.load(stream)

    metadata, serving = read("metadata.json"), read("serving.json")
    onnx_path = os.path.join(model_dir, "model.onnx")
    if serving.get("runtime") == "onnx" and os.path.exists(onnx_path):
        return OnnxModel(onnx_path, metadata)
    return Model(joblib.load(os.path.join(model_dir, "model.joblib")), metadata)


def _records(items: list[dict[str, Any]], model: Model) -> np.ndarray:
    missing = [f for f in model.features if f not in items[0]]
    if missing:
        raise RequestError(f"record 0 is missing feature(s) {', '.join(missing[:5])}")
    try:
        return np.array([[item[f] for f in model.features] for item in items], dtype=float)
    except KeyError as error:
        raise RequestError(f"a record is missing feature {error}") from None


UTF8_BOM = b"\xef\xbb\xbf"  # some tools start every UTF-8 file with it; training accepts it too


def _without_bom(body: bytes) -> bytes:
    return body[len(UTF8_BOM) :] if body.startswith(UTF8_BOM) else body


def _json(body: bytes) -> Any:
    """orjson parses numbers ~5x faster than `json` (the cost of a 100-row request), to the same doubles;
    what it refuses goes to `json`, which accepts NaN literals (then refused as non-finite by `input_fn`)
    and names the position of a real error."""
    body = _without_bom(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"body is not valid JSON: {error}") from None


def _from_json(body: bytes, model: Model) -> np.ndarray:
    data = _json(body)
    if isinstance(data, dict):
        for key in ("instances", "inputs", "data"):
            if key in data:
                data = data[key]
                break
        else:
            if model.features and all(f in data for f in model.features):
                data = [data]
            else:
                raise RequestError('JSON body must be {"instances": [[...]]}, {"inputs": ...}, a list or records')
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return _records(data, model)
    try:
        return np.array(data, dtype=float)
    except (TypeError, ValueError, OverflowError) as error:
        raise RequestError(f"JSON values must be numbers: {error}") from None


NUMERIC_CSV_BYTES = b"0123456789+-.eE,\t\r\n "


def _plain_numbers(body: bytes) -> np.ndarray | None:
    """A CSV body of plain numbers read as one JSON array of rows: orjson converts the text to doubles
    ~5x faster than `float()` per value, with the same results (JSON's numbers are a subset of Python's
    float syntax). None for anything else (`+1`, `.5`, `nan`, blank lines, ragged rows): the general
    parser reads it and names the problem."""
    text = _without_bom(body).strip()
    if not text or text.translate(None, NUMERIC_CSV_BYTES):  # only digits, signs, dots, exponents, separators
        return None
    try:
        rows = np.array(orjson.loads(b"[[" + text.replace(b"\n", b"],[") + b"]]"), dtype=float)
    except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
        return None
    return rows if rows.ndim == 2 else None


def _from_csv(body: bytes) -> np.ndarray:
    rows = _plain_numbers(body)
    if rows is not None:
        return rows
    try:
        text = body.decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        raise RequestError(f"CSV body is not UTF-8 text: {error}") from None
    rows = [line.split(",") for line in text.splitlines() if line.strip()]
    try:
        return np.array(rows, dtype=float)
    except (ValueError, OverflowError) as error:
        width = {len(row) for row in rows}
        if len(width) > 1:
            raise RequestError(f"CSV rows have different numbers of values: {sorted(width)}") from None
        raise RequestError(f"CSV values must be numbers (no header row): {error}") from None


def input_fn(body: bytes, content_type: str, model: Model | None = None) -> np.ndarray:
    media = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise RequestError("empty request body")
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit", 413)
    if media == "text/csv":
        rows = _from_csv(body)
    elif media == "application/json":
        rows = _from_json(body, model or Model(None, {}))
    elif media == "application/x-npy":
        try:
            rows = np.load(io.BytesIO(body), allow_pickle=False).astype(float)
        except (ValueError, TypeError, OSError, EOFError) as error:
            raise RequestError(f"body is not a readable .npy array: {error}") from None
    else:
        raise RequestError(
            f"unsupported content type {content_type!r}: use text/csv, application/json or application/x-npy", 415
        )
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)  # a single row (the stock container's long-standing bug)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise RequestError(f"expected rows of features, got an array of shape {rows.shape}")
    if model is not None and model.features and rows.shape[1] != len(model.features):
        raise RequestError(f"expected {len(model.features)} features per row, got {rows.shape[1]}")
    if not np.isfinite(rows).all():
        row = int(np.argwhere(~np.isfinite(rows))[0][0])
        raise RequestError(f"row {row} has a missing or non-finite value")
    return rows


def predict_fn(rows: np.ndarray, model: Model, probabilities: bool = False) -> dict[str, Any]:
    labels, scores = model.predict(rows, probabilities)
    result: dict[str, Any] = {"predictions": labels.tolist()}
    if scores is not None:
        result["probabilities"] = scores.tolist()
        result["classes"] = [c.item() if hasattr(c, "item") else c for c in model.classes]
    return result


def output_fn(prediction: dict[str, Any], accept: str) -> tuple[bytes, str]:
    media = (accept or "application/json").split(";")[0].strip().lower()
    if media in ("application/json", "*/*", ""):
        return json.dumps(prediction).encode(), "application/json"
    if media == "text/csv":
        lines = []
        for index, value in enumerate(prediction["predictions"]):
            extra = prediction.get("probabilities", [])
            cells = [value] + (list(extra[index]) if extra else [])
            lines.append(",".join(str(cell) for cell in cells))
        return ("\n".join(lines) + "\n").encode(), "text/csv"
    raise RequestError(f"unsupported Accept {accept!r}: use application/json or text/csv", 406)


def wants_probabilities(custom_attributes: str) -> bool:
    """`X-Amzn-SageMaker-Custom-Attributes: probabilities=true` asks for class probabilities."""
    pairs = (part.split("=", 1) for part in (custom_attributes or "").split(";") if "=" in part)
    return any(key.strip() == "probabilities" and value.strip().lower() == "true" for key, value in pairs)
