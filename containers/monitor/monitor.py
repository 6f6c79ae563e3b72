"""Drift monitor: captured endpoint traffic against the training baseline, in Model Monitor's formats.

SageMaker Model Monitor is closed to new customers, so sagegate runs its own monitor as an ordinary
processing job that follows Model Monitor's custom-container contract: the environment variables
`dataset_source` (the endpoint's capture root: a folder, or an s3:// prefix read hour by hour),
`output_path`, `start_time`, `end_time` (on a schedule: `end_time` and `window_minutes`),
`sagemaker_endpoint_name`, `baseline_statistics`,
`baseline_constraints`, `publish_cloudwatch_metrics`; plus sagegate's `feature_importance` (the
evaluation report, to rank drifted features) and `retrain_pipeline_name` (start it on drift).

Writes `statistics.json` (the window's traffic, the baseline's schema), `constraint_violations.json`
(`data_type_check`, `completeness_check`, `baseline_drift_check`, `missing_column_check`,
`extra_column_check`), `report.html` and `summary.json`. The drift distance is the largest gap
between the baseline's and the window's cumulative distributions (the two-sample
Kolmogorov-Smirnov statistic), compared with the constraints' `comparison_threshold`: with
`comparison_method: Robust` (the baseline's) only beyond the 99% sampling margin of the two sample
sizes, with `Simple` as it is.
Exit status: 0 checked (violations or not: they are the result), 2 bad input. Imports nothing
from `pipelines/`; the statistics are the preprocess job's (`preprocess.baseline`), found beside
this script locally and in the job's `lib` input on AWS.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LIBRARY = os.environ.get("SAGEGATE_MONITOR_LIB", "/opt/ml/processing/input/lib")  # preprocess.py's folder
if os.path.isdir(LIBRARY):
    sys.path.insert(0, LIBRARY)
from preprocess import baseline as feature_statistics  # noqa: E402  (the baseline job's own statistics)

NAMESPACE = "sagegate/monitoring"
KS_99 = 1.628  # c(alpha) of the two-sample Kolmogorov-Smirnov test at alpha = 0.01
CDF_POINTS = 2048  # the window's CDF is compared at its quantiles and at every baseline sketch value


class MonitorInputError(ValueError):
    """The job cannot check anything as configured; the message names the variable or file."""


def fail(message: str) -> None:
    output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "message").write_text(message)
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(2)


def parse_time(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MonitorInputError(f"{name}={value!r}: not an ISO 8601 time (2026-11-30T10:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_json(name: str, path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MonitorInputError(f"{name}: {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise MonitorInputError(f"{name}: {path} is not readable JSON: {error}") from None


@dataclass
class Captures:
    """One file's captured inputs, by how they were sent (dropped once read into the window)."""

    positional: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))  # width → CSV lines
    named: list[dict[str, Any]] = field(default_factory=list)  # JSON records


@dataclass
class Window:
    """What the window's captures hold: numeric chunks (float columns) and the counts the checks need."""

    features: list[str]
    chunks: list[pd.DataFrame] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # baseline column → rows without it
    extra: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # other column → rows with it
    wrong: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # column → values that are not numbers
    records: int = 0
    corrupt: int = 0
    files: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, where: str, reason: str) -> None:
        self.corrupt += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {reason}")

    def add(self, captures: Captures) -> None:
        for frame in raw_frames(captures, self.features, self.missing, self.extra):
            if all(dtype.kind == "f" for dtype in frame.dtypes):
                self.chunks.append(frame)  # read as numbers already: nothing to convert or count
                continue
            numbers = pd.DataFrame(index=frame.index)
            for name in frame.columns:
                numbers[name], wrong = numeric(frame[name])
                self.wrong[name] += wrong
            self.chunks.append(numbers)

    def values(self) -> pd.DataFrame:
        return pd.concat(self.chunks, ignore_index=True) if self.chunks else pd.DataFrame(columns=self.features)


def hours(start: datetime, end: datetime) -> list[str]:
    """The `yyyy/mm/dd/hh` folders a [start, end) window touches."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    folders, hour = [], first
    while hour < end:
        folders.append(hour.strftime("%Y/%m/%d/%H"))
        hour += timedelta(hours=1)
    return folders


def capture_files(source: str, start: datetime, end: datetime) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each capture file in the window's hour folders, for every variant, one at a
    time: only one file's bytes are held, however long the window."""
    if source.startswith("s3://"):
        import boto3

        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/") + "/"
        client = boto3.client("s3")
        variants = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/").get("CommonPrefixes", [])
        for variant in variants:
            for hour in hours(start, end):
                pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=variant["Prefix"] + hour)
                for page in pages:
                    for item in page.get("Contents", []):
                        body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                        yield f"s3://{bucket}/{item['Key']}", body
        return
    root = Path(source)
    if not root.is_dir():
        raise MonitorInputError(f"dataset_source: {source} is not a folder or an s3:// prefix")
    for variant in sorted(p for p in root.iterdir() if p.is_dir()):
        for hour in hours(start, end):
            for path in sorted((variant / hour).glob("*.jsonl")):
                yield str(path), path.read_bytes()


def _payload(data: dict[str, Any]) -> tuple[str, str]:
    """(media type, text) of a captured input."""
    media = str(data.get("observedContentType", "")).split(";")[0].strip().lower()
    text = data["data"]
    if data.get("encoding") == "BASE64":
        text = base64.b64decode(text).decode("utf-8")
    return media, text


def _add_json(captures: Captures, text: str) -> None:
    body = json.loads(text)
    if isinstance(body, dict):
        for key in ("instances", "inputs", "data"):
            if key in body:
                body = body[key]
                break
        else:
            body = [body]
    if not isinstance(body, list) or not body:
        raise ValueError("JSON input is not a list of rows or records")
    if not isinstance(body[0], (dict, list)):
        body = [body]  # one row
    for row in body:
        if isinstance(row, dict):
            captures.named.append(row)
        else:
            captures.positional[len(row)].append(",".join(json.dumps(value) for value in row))


def parse_lines(content: bytes) -> list[tuple[int, Any]]:
    """(line number, parsed record or its ValueError) of each non-empty line. A valid file is parsed by
    one `json.loads` (a JSON line holds no raw newline, so its lines joined by commas are one array):
    one C call per file instead of one Python call per line."""
    body = content.strip()
    if body and b"\n\n" not in body:
        try:
            return list(enumerate(json.loads(b"[" + body.replace(b"\n", b",") + b"]"), start=1))
        except (ValueError, UnicodeDecodeError):
            pass
    parsed: list[tuple[int, Any]] = []
    for number, line in enumerate(content.split(b"\n"), start=1):
        if line.strip():
            try:
                parsed.append((number, json.loads(line)))
            except (ValueError, UnicodeDecodeError) as error:
                parsed.append((number, error))
    return parsed


def read_window(files: Iterator[tuple[str, bytes]], features: list[str], start: datetime, end: datetime) -> Window:
    window = Window(features)
    low, high = start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, content in files:
        window.files += 1
        captures = Captures()
        for number, record in parse_lines(content):
            try:
                if isinstance(record, Exception):
                    raise record
                when = record["eventMetadata"]["inferenceTime"]
                if not low <= when < high:
                    continue
                media, text = _payload(record["captureData"]["endpointInput"])
                if media == "text/csv":
                    for row in filter(None, (line.strip() for line in text.splitlines())):
                        captures.positional[row.count(",") + 1].append(row)
                elif media == "application/json":
                    _add_json(captures, text)
                else:
                    raise ValueError(f"input content type {media!r} is neither text/csv nor application/json")
                window.records += 1
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
                window.bad(f"{name}:{number}", str(error) or type(error).__name__)
        window.add(captures)
    return window


def raw_frames(
    captures: Captures, features: list[str], missing: dict[str, int], extra: dict[str, int]
) -> list[pd.DataFrame]:
    """The captured rows as frames of raw values (columns by position or by name), counting per column
    the rows that lacked a baseline feature and the rows that carried a column the baseline lacks."""
    frames = []
    for width, lines in sorted(captures.positional.items()):
        names = features[:width] + [f"_c{i}" for i in range(len(features), width)]
        text = "\n".join(lines)
        try:  # all numbers (the usual case): parsed in C, no conversion afterwards
            frame = pd.read_csv(io.StringIO(text), header=None, names=names, dtype="float64")
        except ValueError:  # some value is not a number: read as text, the data type check counts them
            frame = pd.read_csv(io.StringIO(text), header=None, names=names, dtype=str, keep_default_na=False)
        frames.append(frame)
        for name in features[width:]:
            missing[name] += len(frame)
        for name in names[len(features) :]:
            extra[name] += len(frame)
    if captures.named:
        frame = pd.DataFrame.from_records(captures.named)
        for name in features:
            absent = int(frame[name].isna().sum()) if name in frame else len(frame)
            if absent:
                missing[name] += absent
        for name in frame.columns:
            if name not in features:
                extra[str(name)] += int(frame[name].notna().sum())
        frames.append(frame.astype(object).where(frame.notna(), None))
    return frames


def numeric(column: pd.Series) -> tuple[pd.Series, int]:
    """The column as floats, and how many present values were not numbers."""
    present = column.notna() & (column.astype(str).str.strip() != "")
    values = pd.to_numeric(column.where(present), errors="coerce")
    return values, int((present & values.isna()).sum())


def distance(sketch: list[float], values: np.ndarray) -> float:
    """The largest gap between the baseline's (its sketch, equally weighted) and the window's CDFs."""
    reference = np.sort(np.asarray(sketch, dtype=float))
    current = np.sort(values)
    if not len(reference) or not len(current):
        return 0.0
    points = np.concatenate([reference, np.quantile(current, np.linspace(0, 1, min(CDF_POINTS, len(current))))])
    cdf_reference = np.searchsorted(reference, points, side="right") / len(reference)
    cdf_current = np.searchsorted(current, points, side="right") / len(current)
    return float(np.max(np.abs(cdf_reference - cdf_current)))


def sampling_margin(current: int, baseline: int) -> float:
    """How far the distance between two samples' CDFs can exceed the true distance by chance alone (the
    Kolmogorov-Smirnov bound at 99%: 1.628 * sqrt((n + m) / (n * m))). The `Robust` comparison flags a
    drift only beyond it, so a small window of unchanged traffic is not reported as drifted."""
    if current <= 0 or baseline <= 0:
        return 0.0
    return KS_99 * math.sqrt((current + baseline) / (current * baseline))


def check(
    window: Window, values: pd.DataFrame, statistics: dict[str, Any], constraints: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The violations and every feature's drift distance."""
    config = constraints.get("monitoring_config", {})
    distribution = config.get("distribution_constraints", {})
    threshold = float(distribution.get("comparison_threshold", 0.1))
    type_threshold = float(config.get("datatype_check_threshold", 1.0))
    compare = distribution.get("perform_comparison", "Enabled") == "Enabled"
    method = distribution.get("comparison_method", "Robust")
    limits = {item["name"]: item for item in constraints.get("features", [])}
    violations: list[dict[str, Any]] = []
    distances: dict[str, float] = {}
    total, missing = len(values), window.missing

    def violation(name: str, kind: str, description: str) -> None:
        violations.append({"feature_name": name, "constraint_check_type": kind, "description": description})

    for feature in statistics["features"]:
        name = feature["name"]
        if missing.get(name):
            violation(name, "missing_column_check", f"Missing from {missing[name]} of {total} captured rows")
        if name not in values:
            continue
        column, wrong = values[name], window.wrong.get(name, 0)
        carried = total - missing.get(name, 0)
        if not carried:
            continue
        if wrong and (carried - wrong) / carried < type_threshold:
            violation(
                name, "data_type_check",
                f"{wrong} of {carried} values are not numbers (baseline type {feature['inferred_type']})",
            )  # fmt: skip
        elif feature["inferred_type"] == "Integral":
            present = column.dropna()
            fractional = int((present != np.floor(present)).sum())
            if fractional and (len(present) - fractional) / len(present) < type_threshold:
                violation(name, "data_type_check", f"{fractional} of {len(present)} values are not integers")
        completeness = float(column.notna().sum()) / carried
        expected = float(limits.get(name, {}).get("completeness", 0.0))
        if completeness < expected - 1e-9:
            violation(
                name, "completeness_check",
                f"Data completeness {completeness:.4f} is below the baseline's {expected:.4f}",
            )  # fmt: skip
        present = column.dropna().to_numpy(dtype=float)
        sketch = feature["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"]
        distances[name] = round(distance([value for level in sketch for value in level], present), 6)
        trained_on = int(feature["numerical_statistics"]["common"].get("num_present", 0))
        slack = sampling_margin(len(present), trained_on) if method == "Robust" else 0.0
        if compare and distances[name] - slack > threshold:
            margin = f" by more than the sampling margin {slack:.3f}" if slack else ""
            violation(
                name, "baseline_drift_check",
                f"Baseline drift distance: {distances[name]} exceeds threshold: {threshold}{margin}",
            )  # fmt: skip
    for name, count in sorted(window.extra.items()):
        violation(name, "extra_column_check", f"Not in the baseline; present in {count} of {total} captured rows")
    return violations, distances


def importance_ranks(path: str) -> dict[str, float]:
    if not path or not Path(path).is_file():
        return {}
    report = read_json("feature_importance", path)
    listed = report.get("feature_importance", report).get("features", [])
    return {item["name"]: float(item["importance_mean"]) for item in listed}


def ranked(names: list[str], drifted: set[str], importance: dict[str, float]) -> list[str]:
    """Drifted features first, each group by importance (most important first), then by name."""
    return sorted(names, key=lambda n: (n not in drifted, -importance.get(n, 0.0), n))


def report_html(
    endpoint: str,
    window: tuple[datetime, datetime],
    values: pd.DataFrame,
    statistics: dict[str, Any],
    violations: list[dict[str, Any]],
    distances: dict[str, float],
    importance: dict[str, float],
) -> str:
    """One page: the violations, then per feature the baseline's and the window's distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = {f["name"]: f for f in statistics["features"]}
    drifted = {v["feature_name"] for v in violations if v["constraint_check_type"] == "baseline_drift_check"}
    rows = "".join(
        f"<tr><td>{html.escape(v['feature_name'])}</td><td>{v['constraint_check_type']}</td>"
        f"<td>{html.escape(v['description'])}</td></tr>"
        for v in violations
    )
    sections = []
    for name in ranked([n for n in baseline if n in values], drifted, importance):
        buckets = baseline[name]["numerical_statistics"]["distribution"]["kll"]["buckets"]
        edges = [b["lower_bound"] for b in buckets] + [buckets[-1]["upper_bound"]]
        counts = np.array([b["count"] for b in buckets], dtype=float)
        current = values[name].dropna().to_numpy(dtype=float)
        figure, axes = plt.subplots(figsize=(5, 2.6))
        axes.stairs(counts / max(counts.sum(), 1), edges, label="baseline (training split)", fill=True, alpha=0.5)
        low, high = min(edges[0], current.min(initial=edges[0])), max(edges[-1], current.max(initial=edges[-1]))
        histogram, bins = np.histogram(current, bins=20, range=(low, high if high > low else low + 1))
        axes.stairs(histogram / max(histogram.sum(), 1), bins, label="captured window", linewidth=2)
        axes.set_title(f"{name}: distance {distances.get(name, 0):.3f}")
        axes.legend(fontsize=7)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        image = base64.b64encode(buffer.getvalue()).decode()
        flag = " (drifted)" if name in drifted else ""
        sections.append(
            f"<section><h3>{html.escape(name)}{flag}</h3><p>importance {importance.get(name, 0):.4f}</p>"
            f'<img alt="{html.escape(name)} distributions" src="data:image/png;base64,{image}"></section>'
        )
    start, end = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in window)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Drift report: {html.escape(endpoint)}</title></head><body>"
        f"<h1>Drift report: {html.escape(endpoint)}</h1><p>Window {start} to {end}, {len(values)} rows.</p>"
        f"<h2>Violations ({len(violations)})</h2><table><tr><th>feature</th><th>check</th><th>description</th></tr>"
        f"{rows}</table><h2>Features (drifted first, by importance)</h2>{''.join(sections)}</body></html>"
    )


def publish_metrics(endpoint: str, distances: dict[str, float], when: datetime) -> None:
    """One CloudWatch metric per feature distance (AWS; the role may publish to this namespace only)."""
    import boto3

    data = [
        {
            "MetricName": "feature_baseline_drift",
            "Dimensions": [{"Name": "Endpoint", "Value": endpoint}, {"Name": "Feature", "Value": name}],
            "Timestamp": when,
            "Value": value,
        }
        for name, value in sorted(distances.items())
    ]
    client = boto3.client("cloudwatch")
    for offset in range(0, len(data), 1000):
        client.put_metric_data(Namespace=NAMESPACE, MetricData=data[offset : offset + 1000])


def start_retraining(pipeline: str, endpoint: str, drifted: list[str]) -> str:
    import boto3

    response = boto3.client("sagemaker").start_pipeline_execution(
        PipelineName=pipeline,
        PipelineExecutionDescription=f"retrain on drift of {endpoint}: {', '.join(drifted)}"[:3072],
    )
    return str(response["PipelineExecutionArn"])


def time_window(env: dict[str, str]) -> tuple[datetime, datetime]:
    """Model Monitor's `start_time`/`end_time`; on a schedule, `end_time` (the fire time, or now when
    empty) and `window_minutes` before it."""
    end = parse_time("end_time", env["end_time"]) if env.get("end_time") else datetime.now(UTC)
    if env.get("start_time"):
        return parse_time("start_time", env["start_time"]), end
    minutes = env.get("window_minutes", "")
    if not minutes.isdigit() or int(minutes) < 1:
        raise MonitorInputError(f"start_time is not set and window_minutes={minutes!r} is not a positive whole number")
    return end - timedelta(minutes=int(minutes)), end


def run(env: dict[str, str]) -> dict[str, Any]:
    for name in ("dataset_source", "output_path", "baseline_statistics"):
        if not env.get(name):
            raise MonitorInputError(f"{name}: required environment variable is not set")
    start, end = time_window(env)
    if end <= start:
        raise MonitorInputError(
            f"end_time ({end:%Y-%m-%dT%H:%M:%SZ}) is not after start_time ({start:%Y-%m-%dT%H:%M:%SZ})"
        )
    statistics = read_json("baseline_statistics", env["baseline_statistics"])
    constraints = (
        read_json("baseline_constraints", env["baseline_constraints"]) if env.get("baseline_constraints") else {}
    )
    if not isinstance(statistics, dict) or not isinstance(statistics.get("features"), list):
        raise MonitorInputError(f"baseline_statistics: {env['baseline_statistics']} has no `features` list")
    endpoint = env.get("sagemaker_endpoint_name", "")
    output = Path(env["output_path"])
    output.mkdir(parents=True, exist_ok=True)
    features = [f["name"] for f in statistics["features"]]
    window = read_window(capture_files(env["dataset_source"], start, end), features, start, end)
    summary: dict[str, Any] = {
        "endpoint": endpoint,
        "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_time": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": window.files,
        "records": window.records,
        "corrupt_lines": window.corrupt,
        "corrupt_examples": window.examples,
    }
    values = window.values()
    if values.empty:
        summary.update(status="nothing_to_check", rows=0, violations=0, drifted_features=[], distances={})
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    violations, distances = check(window, values, statistics, constraints)
    current, _ = feature_statistics(values, list(values.columns))
    (output / "statistics.json").write_text(json.dumps(current))
    (output / "constraint_violations.json").write_text(json.dumps({"violations": violations}, indent=2))
    importance = importance_ranks(env.get("feature_importance", ""))
    drifted = ranked(
        [v["feature_name"] for v in violations if v["constraint_check_type"] == "baseline_drift_check"],
        set(),
        importance,
    )
    report = report_html(endpoint, (start, end), values, statistics, violations, distances, importance)
    (output / "report.html").write_text(report)
    summary.update(
        status="violations" if violations else "no_violations",
        rows=len(values),
        violations=len(violations),
        checks=sorted({v["constraint_check_type"] for v in violations}),
        drifted_features=drifted,
        distances=distances,
        retrain_requested=bool(drifted) and bool(env.get("retrain_on_drift") == "true"),
    )
    if env.get("publish_cloudwatch_metrics") == "Enabled":
        publish_metrics(endpoint, distances, end)
    if summary["retrain_requested"] and env.get("retrain_pipeline_name"):
        summary["retraining_execution"] = start_retraining(env["retrain_pipeline_name"], endpoint, drifted)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    try:
        summary = run(dict(os.environ))
    except MonitorInputError as error:
        fail(str(error))
        return
    print(json.dumps({k: v for k, v in summary.items() if k != "distances"}))


if __name__ == "__main__":
    main()
