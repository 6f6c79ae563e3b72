"""Production monitoring: data capture in SageMaker's format, the drift monitor, retrain on drift.

The monitor container is run as the job runs it (a subprocess with Model Monitor's environment) on
capture files written by the capture module itself; the end-to-end cases share one state folder
where friedman1 (the bundled realtime example, capture on) is trained, deployed and invoked with an
unmodified boto3 client through the gateway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from sklearn.datasets import make_friedman1

from pipelines.config import ConfigError, load_config
from pipelines.containers import container_code
from pipelines.gate import gate_definition, model_settings
from pipelines.local.capture import CaptureTarget, CaptureWriter, capture_key, capture_line, spool_folder
from pipelines.state import Project, StateHome
from tests.conftest import MODELS, running_console, wait_for, write_config
from tests.moto_server import moto_server

PROJECT = Project()
ENDPOINT = "sagegate-development-friedman1-realtime"
FEATURES = [f"x{i}" for i in range(8)]
WHEN = datetime(2026, 11, 30, 9, 15, 42, 123000, tzinfo=UTC)


# ---- capture format ---------------------------------------------------------------------------


def test_capture_line_is_sagemakers_format_byte_for_byte() -> None:
    line = capture_line(b"1.0,2.5", "text/csv", b'{"predictions": [3.1]}', "application/json", WHEN, "e-1", "i-9")
    assert line == (
        '{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"1.0,2.5",'
        '"encoding":"CSV"},"endpointOutput":{"observedContentType":"application/json","mode":"OUTPUT",'
        '"data":"{\\"predictions\\": [3.1]}","encoding":"JSON"}},"eventMetadata":{"eventId":"e-1",'
        '"inferenceTime":"2026-11-30T09:15:42Z","inferenceId":"i-9"},"eventVersion":"0"}\n'
    )
    binary = json.loads(capture_line(b"\x93NUMPY", "application/x-npy", b"1", "text/csv", WHEN))
    assert binary["captureData"]["endpointInput"] == {
        "observedContentType": "application/x-npy", "mode": "INPUT", "data": "k05VTVBZ", "encoding": "BASE64",
    }  # fmt: skip
    assert "inferenceId" not in binary["eventMetadata"]


def test_capture_follows_the_endpoint_configs_modes_and_content_types() -> None:
    from pipelines.local.capture import capture_target

    config = {"DataCaptureConfig": {"EnableCapture": True, "DestinationS3Uri": "s3://b/p/",
                                    "CaptureOptions": [{"CaptureMode": "Input"}]}}  # fmt: skip
    target = capture_target(config)
    assert target is not None and target.destination == "s3://b/p" and target.sampling_percentage == 100
    line = json.loads(capture_line(b"1,2", "text/csv", b"3", "text/csv", WHEN, target=target))
    assert list(line["captureData"]) == ["endpointInput"]  # Input only
    assert line["captureData"]["endpointInput"]["encoding"] == "BASE64"  # no CaptureContentTypeHeader: base64
    assert capture_target({"DataCaptureConfig": {**config["DataCaptureConfig"], "EnableCapture": False}}) is None
    assert capture_target({}) is None


def test_capture_key_is_the_aws_layout() -> None:
    key = capture_key("s3://bucket/monitoring/capture", ENDPOINT, "AllTraffic", WHEN)
    assert key == f"bucket/monitoring/capture/{ENDPOINT}/AllTraffic/2026/11/30/09"


def test_capture_samples_at_the_configured_percentage_and_writes_every_sampled_record(home: StateHome) -> None:
    from pipelines.local.s3 import LocalS3

    with LocalS3(home.ensure()) as s3:
        s3.ensure_bucket("sagegate-development-training")
    writer = CaptureWriter(home, "us-east-1")
    target = CaptureTarget("s3://sagegate-development-training/monitoring/capture", 30)
    for number in range(2000):
        writer.offer(ENDPOINT, "AllTraffic", target, (f"{number}".encode(), "text/csv"), (b"1", "text/csv"))
    never = CaptureTarget(target.destination, 0)
    for _ in range(200):
        writer.offer("other", "AllTraffic", never, (b"1", "text/csv"), (b"1", "text/csv"))
    writer.close()
    captured = writer.counts[ENDPOINT]["captured"]
    assert 480 <= captured <= 720  # binomial(2000, 0.3): mean 600, sd 20.5; outside is 6 sd away
    assert "other" not in writer.counts
    with LocalS3(home) as s3:
        listed = s3.client.list_objects_v2(Bucket="sagegate-development-training", Prefix="monitoring/capture/")
        keys = [item["Key"] for item in listed.get("Contents", [])]
        lines = [line for key in keys for line in s3.read(f"s3://sagegate-development-training/{key}").splitlines()]
    assert len(lines) == captured
    assert all(
        re.fullmatch(
            rf"monitoring/capture/{ENDPOINT}/AllTraffic/\d{{4}}/\d\d/\d\d/\d\d/\d\d-\d\d-\d{{3}}-[0-9a-f-]{{36}}\.jsonl",
            k,
        )
        for k in keys
    )
    assert not list(spool_folder(home).rglob("*.jsonl*")), "delivered files leave the spool"


# ---- config, gate and definitions ------------------------------------------------------------


def test_capture_is_refused_on_serverless_with_the_reason(tmp_path: Path) -> None:
    text = (MODELS / "breast-cancer.yaml").read_text() + "monitoring: {data_capture: {enabled: true}}\n"
    with pytest.raises(ConfigError, match=r"serverless endpoints do not capture data"):
        load_config(write_config(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("monitoring.schedule=every hour", "monitoring.schedule"),
        ("monitoring.schedule=cron(99 2 * * ? *)", "monitoring.schedule"),
        ("monitoring.data_capture.sampling_percentage=101", "monitoring.data_capture.sampling_percentage"),
        ("monitoring.window_minutes=0", "monitoring.window_minutes"),
    ],
)
def test_bad_monitoring_settings_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_config(MODELS / "friedman1.yaml", [override])


def test_realtime_endpoint_config_carries_the_capture_config_and_serverless_does_not() -> None:
    states = gate_definition()["States"]
    capture = states["CreateRealtimeEndpointConfig"]["Parameters"]["DataCaptureConfig"]
    assert capture["EnableCapture.$"] == "$.data_capture.enabled"
    assert capture["DestinationS3Uri.$"] == "$.data_capture.destination_s3_uri"
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    assert "DataCaptureConfig" not in states["CreateServerlessEndpointConfig"]["Parameters"]
    settings = model_settings(load_config(MODELS / "friedman1.yaml"), PROJECT)["data_capture"]
    assert settings == {
        "enabled": True, "sampling_percentage": 100,
        "destination_s3_uri": "s3://sagegate-development-training/monitoring/capture",
    }  # fmt: skip
    assert model_settings(load_config(MODELS / "breast-cancer.yaml"), PROJECT)["data_capture"]["enabled"] is False


def test_monitoring_pipeline_gives_the_job_model_monitors_environment_and_the_champions_baseline() -> None:
    from pipelines.definition import export_definition

    exported = export_definition(load_config(MODELS / "friedman1.yaml"), PROJECT, kind="monitoring")
    definition = json.loads(exported.json)
    assert [p["Name"] for p in definition["Parameters"]] == ["EndTime", "WindowMinutes", "ProcessingInstanceType"]
    (step,) = definition["Steps"]
    environment = step["Arguments"]["Environment"]
    assert environment["dataset_source"] == f"s3://sagegate-development-training/monitoring/capture/{ENDPOINT}"
    assert environment["end_time"] == {"Get": "Parameters.EndTime"}
    assert environment["retrain_pipeline_name"] == "sagegate-development-friedman1-training"
    sources = [i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]]
    assert "s3://sagegate-development-training/models/friedman1/champion/baseline" in sources
    assert any(key.endswith("/preprocess.py") for key in exported.code), "the statistics code ships with the job"
    with pytest.raises(ValueError, match="nothing to monitor"):
        export_definition(load_config(MODELS / "breast-cancer.yaml"), PROJECT, kind="monitoring")


def test_model_stack_schedules_the_monitor_only_for_models_that_capture() -> None:
    from pipelines.templates import EXAMPLE_PARAMETERS, render

    parameters = {"Environment": "staging", **EXAMPLE_PARAMETERS["model.yaml"], "MonitoringSchedule": "rate(2 hours)"}
    on = render("model.yaml", parameters)["Resources"]
    schedule = on["DriftMonitoring"]["Properties"]
    assert schedule["ScheduleExpression"] == "rate(2 hours)" or schedule["ScheduleExpression"] == {
        "Ref": "MonitoringSchedule"
    }
    assert "<aws.scheduler.scheduled-time>" in schedule["Target"]["Input"]["Fn::Sub"]
    assert on["MonitoringPipeline"]["Properties"]["PipelineName"]["Fn::Sub"].endswith("-monitoring")
    off = render("model.yaml", {**parameters, "MonitoringPipelineDefinitionKey": ""})["Resources"]
    assert "DriftMonitoring" not in off and "MonitoringPipeline" not in off


def test_the_aws_endpoint_stack_captures_what_the_yaml_says() -> None:
    from pipelines.provision import template_parameters
    from pipelines.templates import render

    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/sagegate-development-friedman1/1"
    config = load_config(MODELS / "friedman1.yaml", ["monitoring.data_capture.sampling_percentage=25"])
    template, parameters = template_parameters(config, PROJECT, arn)
    endpoint_config = render(template, parameters)["Resources"]["EndpointConfig"]["Properties"]
    capture = endpoint_config["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == {"Ref": "DataCaptureDestination"}
    assert parameters["DataCaptureDestination"] == PROJECT.capture_uri
    assert parameters["DataCaptureSamplingPercentage"] == "25"
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    _, without = template_parameters(load_config(MODELS / "friedman1.yaml", ["monitoring=null"]), PROJECT, arn)
    assert "DataCaptureConfig" not in render(template, without)["Resources"]["EndpointConfig"]["Properties"]


# ---- the monitor job ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """statistics.json + constraints.json of friedman1's training rows, by the preprocess job's code."""
    sys.path.insert(0, str(container_code("preprocess")))
    try:
        from preprocess import baseline as compute
    finally:
        sys.path.pop(0)
    x, _ = make_friedman1(n_samples=700, n_features=8, random_state=1)
    statistics, constraints = compute(pd.DataFrame(x, columns=FEATURES), FEATURES)
    folder = tmp_path_factory.mktemp("baseline")
    (folder / "statistics.json").write_text(json.dumps(statistics))
    (folder / "constraints.json").write_text(json.dumps(constraints))
    importance = [
        {"name": name, "importance_mean": float(8 - i), "importance_std": 0.0} for i, name in enumerate(FEATURES)
    ]
    (folder / "evaluation.json").write_text(json.dumps({"feature_importance": {"features": importance}}))
    return folder


def write_captures(root: Path, bodies: list[tuple[bytes, str]], when: datetime = WHEN, extra: str = "") -> Path:
    folder = root / "AllTraffic" / when.strftime("%Y/%m/%d/%H")
    folder.mkdir(parents=True, exist_ok=True)
    lines = [capture_line(body, media, b"0", "text/csv", when) for body, media in bodies]
    (folder / f"{when:%M-%S}-000-test.jsonl").write_text("".join(lines) + extra)
    return root


def rows_as_csv(x: np.ndarray) -> list[tuple[bytes, str]]:
    return [(",".join(f"{v:.6f}" for v in row).encode(), "text/csv") for row in x]


def run_job(baseline: Path, source: Path, out: Path, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    environment = {
        **os.environ,
        "dataset_source": str(source),
        "output_path": str(out),
        "start_time": (WHEN - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end_time": (WHEN + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sagemaker_endpoint_name": ENDPOINT,
        "baseline_statistics": str(baseline / "statistics.json"),
        "baseline_constraints": str(baseline / "constraints.json"),
        "feature_importance": str(baseline / "evaluation.json"),
        "SAGEGATE_MONITOR_LIB": str(container_code("preprocess")),
        **extra,
    }
    job = subprocess.run(
        [sys.executable, str(container_code("monitor", "monitor.py"))], env=environment, capture_output=True, text=True
    )
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    return job, summary


def violations(out: Path) -> list[tuple[str, str]]:
    document = json.loads((out / "constraint_violations.json").read_text())
    return [(v["feature_name"], v["constraint_check_type"]) for v in document["violations"]]


def test_undrifted_traffic_has_no_violations(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=1000, n_features=8, random_state=17)
    job, summary = run_job(baseline, write_captures(tmp_path / "capture", rows_as_csv(x)), tmp_path / "out")
    assert job.returncode == 0, job.stderr
    assert summary["status"] == "no_violations" and summary["rows"] == 1000
    assert violations(tmp_path / "out") == []
    statistics = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert [f["name"] for f in statistics["features"]] == FEATURES
    assert statistics["dataset"]["item_count"] == 1000


def test_one_shifted_feature_is_exactly_that_features_drift_violation(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=1000, n_features=8, random_state=17)
    x[:, 5] += 0.4
    job, summary = run_job(baseline, write_captures(tmp_path / "capture", rows_as_csv(x)), tmp_path / "out")
    assert job.returncode == 0, job.stderr
    assert violations(tmp_path / "out") == [("x5", "baseline_drift_check")]
    assert summary["drifted_features"] == ["x5"] and summary["distances"]["x5"] > 0.3
    document = json.loads((tmp_path / "out" / "constraint_violations.json").read_text())
    assert re.fullmatch(
        r"Baseline drift distance: 0\.\d+ exceeds threshold: 0\.1 by more than the sampling margin 0\.0\d\d",
        document["violations"][0]["description"],
    )
    report = (tmp_path / "out" / "report.html").read_text()
    headings = re.findall(r"<h3>([^<]+)</h3>", report)
    assert headings[0] == "x5 (drifted)"  # drifted first, then by importance
    assert headings[1:] == [f for f in FEATURES if f != "x5"]
    assert report.count("data:image/png;base64,") == 8


def test_robust_comparison_allows_for_a_small_windows_sampling_noise(baseline: Path, tmp_path: Path) -> None:
    """150 rows with a slight shift: beyond the threshold as measured (Simple flags it), within the 99%
    sampling margin of 150 vs 700 rows (Robust, the baseline's method, does not)."""
    x, _ = make_friedman1(n_samples=150, n_features=8, random_state=23)
    x[:, 0] += 0.08
    source = write_captures(tmp_path / "capture", rows_as_csv(x))
    robust, summary = run_job(baseline, source, tmp_path / "robust")
    assert robust.returncode == 0, robust.stderr
    assert summary["distances"]["x0"] > 0.1 and violations(tmp_path / "robust") == []
    constraints = json.loads((baseline / "constraints.json").read_text())
    constraints["monitoring_config"]["distribution_constraints"]["comparison_method"] = "Simple"
    (tmp_path / "simple.json").write_text(json.dumps(constraints))
    simple, _ = run_job(baseline, source, tmp_path / "simple", baseline_constraints=str(tmp_path / "simple.json"))
    assert simple.returncode == 0, simple.stderr
    assert ("x0", "baseline_drift_check") in violations(tmp_path / "simple")


def test_json_captures_records_and_instances_are_read_like_csv(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=600, n_features=8, random_state=3)
    records = [(json.dumps(dict(zip(FEATURES, row, strict=True))).encode(), "application/json") for row in x[:300]]
    instances = [(json.dumps({"instances": x[300:].tolist()}).encode(), "application/json; charset=utf-8")]
    job, summary = run_job(baseline, write_captures(tmp_path / "capture", records + instances), tmp_path / "out")
    assert job.returncode == 0, job.stderr
    assert summary["rows"] == 600 and summary["records"] == 301
    assert violations(tmp_path / "out") == []


def test_missing_and_extra_columns_are_violations_not_crashes(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=400, n_features=9, random_state=5)
    short = rows_as_csv(x[:200, :7])  # x7 missing
    wide = [(json.dumps({**dict(zip(FEATURES, row[:8], strict=True)), "zipcode": 1}).encode(), "application/json")
            for row in x[200:]]  # fmt: skip
    job, _ = run_job(baseline, write_captures(tmp_path / "capture", short + wide), tmp_path / "out")
    assert job.returncode == 0, job.stderr
    found = violations(tmp_path / "out")
    assert ("x7", "missing_column_check") in found and ("zipcode", "extra_column_check") in found
    assert not [v for v in found if v[1] not in ("missing_column_check", "extra_column_check")]


def test_corrupt_lines_and_wrong_types_are_counted_and_named(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=500, n_features=8, random_state=9)
    bodies = rows_as_csv(x)
    bodies[0] = (b"0.1,0.2,abc,0.4,0.5,0.6,0.7,0.8", "text/csv")
    source = write_captures(tmp_path / "capture", bodies, extra='{"captureData": \n{not json\n')
    job, summary = run_job(baseline, source, tmp_path / "out")
    assert job.returncode == 0, job.stderr
    assert summary["corrupt_lines"] == 2 and summary["records"] == 500
    first, second = summary["corrupt_examples"]
    assert re.search(r"\.jsonl:501: ", first) and re.search(r"\.jsonl:502: ", second)  # file and line named
    assert ("x2", "data_type_check") in violations(tmp_path / "out")


def test_an_empty_window_is_nothing_to_check(baseline: Path, tmp_path: Path) -> None:
    x, _ = make_friedman1(n_samples=50, n_features=8, random_state=9)
    source = write_captures(tmp_path / "capture", rows_as_csv(x), when=WHEN - timedelta(hours=3))
    job, summary = run_job(baseline, source, tmp_path / "out")
    assert job.returncode == 0, job.stderr
    assert summary["status"] == "nothing_to_check" and summary["rows"] == 0
    assert not (tmp_path / "out" / "constraint_violations.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"baseline_statistics": "/nonexistent/statistics.json"}, "baseline_statistics: /nonexistent/statistics.json"),
        ({"end_time": "yesterday"}, "end_time='yesterday': not an ISO 8601 time"),
        ({"dataset_source": ""}, "dataset_source: required environment variable is not set"),
        ({"start_time": "", "window_minutes": "x"}, "window_minutes='x' is not a positive whole number"),
    ],
)
def test_bad_job_input_exits_2_naming_the_variable(baseline: Path, tmp_path: Path, change: dict, message: str) -> None:
    job, _ = run_job(baseline, tmp_path, tmp_path / "out", **change)
    assert job.returncode == 2
    assert message in job.stderr


def test_on_aws_the_job_reads_s3_publishes_distances_and_starts_retraining(baseline: Path, tmp_path: Path) -> None:
    """The AWS path against a moto server: captures read from S3 hour by hour, one CloudWatch metric per
    feature, and the training pipeline started on drift."""
    import boto3

    with moto_server() as aws:
        clients = {name: boto3.client(name, endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                      aws_access_key_id="testing", aws_secret_access_key="testing")
                   for name in ("s3", "cloudwatch", "sagemaker")}  # fmt: skip
        check_aws_path(baseline, tmp_path, aws, clients)


def check_aws_path(baseline: Path, tmp_path: Path, aws: dict[str, str], clients: dict[str, Any]) -> None:
    clients["s3"].create_bucket(Bucket="captures")
    x, _ = make_friedman1(n_samples=800, n_features=8, random_state=11)
    x[:, 0] += 0.5
    local = write_captures(tmp_path / "capture", rows_as_csv(x))
    for path in local.rglob("*.jsonl"):
        clients["s3"].upload_file(str(path), "captures", f"monitoring/capture/{ENDPOINT}/{path.relative_to(local)}")
    clients["sagemaker"].create_pipeline(
        PipelineName="sagegate-development-friedman1-training",
        PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}),
        RoleArn="arn:aws:iam::123456789012:role/sagegate-development-sagemaker-training",
    )
    job, summary = run_job(
        baseline, tmp_path, tmp_path / "out", **aws,
        dataset_source=f"s3://captures/monitoring/capture/{ENDPOINT}",
        publish_cloudwatch_metrics="Enabled", retrain_on_drift="true",
        retrain_pipeline_name="sagegate-development-friedman1-training",
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert summary["drifted_features"] == ["x0"] and summary["rows"] == 800
    metrics = clients["cloudwatch"].list_metrics(Namespace="sagegate/monitoring")["Metrics"]
    features = sorted(d["Value"] for m in metrics for d in m["Dimensions"] if d["Name"] == "Feature")
    assert features == FEATURES
    executions = clients["sagemaker"].list_pipeline_executions(PipelineName="sagegate-development-friedman1-training")
    assert len(executions["PipelineExecutionSummaries"]) == 1
    assert summary["retraining_execution"] == executions["PipelineExecutionSummaries"][0]["PipelineExecutionArn"]


# ---- end to end: capture through the gateway, `sagegate monitor`, retrain on drift -----------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """friedman1 trained, registered and deployed by the gate (realtime, capture on) in one state folder."""
    from pipelines.local.gateway import stop_gateway
    from pipelines.local_gate import run_gate
    from pipelines.local_run import run_local

    home = StateHome(tmp_path_factory.mktemp("monitoring") / "state").ensure()
    config = load_config(MODELS / "friedman1.yaml")
    record = run_local(config, PROJECT, home)
    assert record.status == "Succeeded", record.failure_reason
    execution = run_gate(config, PROJECT, home, record.registered_version)
    assert execution.status == "SUCCEEDED", execution.error
    yield home
    stop_gateway(home)


def sagegate(home: StateHome, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "sagegate")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(home.root)}
    )


def captured_lines(home: StateHome) -> list[dict[str, Any]]:
    from pipelines.local.s3 import LocalS3

    with LocalS3(home) as s3:
        pages = s3.client.get_paginator("list_objects_v2").paginate(
            Bucket=PROJECT.bucket, Prefix=f"monitoring/capture/{ENDPOINT}/"
        )
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return [json.loads(line) for key in keys for line in s3.read(f"s3://{PROJECT.bucket}/{key}").splitlines()]


def invoke_rows(home: StateHome, x: np.ndarray) -> None:
    from pipelines.local.gateway import runtime_client

    client = runtime_client(home, PROJECT)
    for row in x:
        client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=",".join(f"{v:.6f}" for v in row))


def test_captures_survive_a_gateway_killed_outright(deployed: StateHome, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.local.gateway import running_gateway, start_gateway, stop_gateway

    home = deployed
    stop_gateway(home)
    before = len(captured_lines(home))
    monkeypatch.setenv("SAGEGATE_CAPTURE_FILE_SECONDS", "3600")  # this gateway never seals a file itself
    start_gateway(home, PROJECT)
    x, _ = make_friedman1(n_samples=40, n_features=8, random_state=21)
    invoke_rows(home, x)

    def spooled() -> int:
        return sum(path.read_text().count("\n") for path in spool_folder(home).rglob("*.jsonl.part"))

    wait_for(lambda: spooled() == 40, "40 captured lines in the spool")
    os.killpg(running_gateway(home)["pid"], signal.SIGKILL)
    wait_for(lambda: running_gateway(home) is None, "the gateway to be gone")
    monkeypatch.delenv("SAGEGATE_CAPTURE_FILE_SECONDS")
    start_gateway(home, PROJECT)  # the next gateway seals and delivers what the killed one left
    lines = wait_for(lambda: (found := captured_lines(home)) and len(found) == before + 40 and found, "the delivery")
    sent = [",".join(f"{v:.6f}" for v in row) for row in x]
    assert sorted(line["captureData"]["endpointInput"]["data"] for line in lines[before:]) == sorted(sent)
    output = json.loads(lines[-1]["captureData"]["endpointOutput"]["data"])
    assert len(output["predictions"]) == 1
    assert not list(spool_folder(home).rglob("*.jsonl*"))


def test_monitor_run_finds_drift_in_captured_traffic_and_retrains(deployed: StateHome) -> None:
    from pipelines.registry import find_version

    home = deployed
    since = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    already = len(captured_lines(home))
    normal, _ = make_friedman1(n_samples=1000, n_features=8, random_state=17)
    invoke_rows(home, normal)
    wait_for(lambda: len(captured_lines(home)) >= already + 1000, "the captures delivered")
    clean = sagegate(home, "monitor", "run", "--endpoint", ENDPOINT, "--since", since, "--json")
    assert clean.returncode == 0, clean.stderr
    summary = json.loads(clean.stdout)
    assert summary["status"] == "no_violations" and summary["rows"] >= 1000
    assert summary["baseline"]["version"] == "1"

    drifted = normal.copy()
    drifted[:, 3] += 0.5
    invoke_rows(home, drifted)  # and at once: the command waits for the gateway to deliver what it captured
    found = sagegate(home, "monitor", "run", "--endpoint", ENDPOINT, "--since", since, "--retrain")
    assert found.returncode == 1, found.stderr
    until = re.search(r"to (\S+Z)\n", found.stdout).group(1)
    window = [line for line in captured_lines(home) if since <= line["eventMetadata"]["inferenceTime"] < until]
    assert len(window) >= 2000  # every request sent above (and any from the test before, in the same second)
    assert f"{len(window)} rows from {len(window)} captured requests, 0 corrupt lines" in found.stdout
    assert "drifted: x3" in found.stdout
    detail = json.loads(sagegate(home, "endpoints", "show", ENDPOINT).stdout)["DataCaptureConfig"]
    assert detail["CaptureStatus"] == "Started" and detail["Dropped"] == 0
    assert detail["Captured"] >= 2000 and detail["Delivered"] >= 2000  # counts survive restarts (and a kill lags)
    assert re.search(r"retrained: run \w+ Succeeded, version 2, gate SUCCEEDED", found.stdout), found.stdout
    assert find_version(home, PROJECT.registered_model("friedman1"), "champion")["version"] == "2"

    shown = sagegate(home, "monitor", "show", ENDPOINT, "--json")
    reports = json.loads(shown.stdout)
    assert [r["status"] for r in reports[-2:]] == ["no_violations", "violations"]
    assert Path(reports[-1]["report"]["path"]).is_file()


def test_the_console_lists_the_reports_and_serves_them_under_their_own_policy(deployed: StateHome) -> None:
    from pipelines.monitor import list_reports

    reports = list_reports(deployed, ENDPOINT)
    assert reports, "the test before leaves reports"
    with running_console(deployed) as (base, _):
        page = requests.get(f"{base}/endpoints/{ENDPOINT}", timeout=30)
        assert page.status_code == 200
        for report in reports:
            assert f'href="/endpoints/{ENDPOINT}/reports/{report["folder"]}"' in page.text
        served = requests.get(f"{base}/endpoints/{ENDPOINT}/reports/{reports[-1]['folder']}", timeout=30)
        assert served.status_code == 200 and served.text == Path(reports[-1]["report"]["path"]).read_text()
        policy = served.headers["content-security-policy"]
        assert "sandbox" in policy and "script-src" not in policy  # the monitor's HTML runs no script


def test_monitor_run_without_data_or_with_bad_input_says_so(deployed: StateHome) -> None:
    empty = sagegate(
        deployed,
        "monitor",
        "run",
        "--endpoint",
        ENDPOINT,
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "2020-01-01T01:00:00Z",
    )
    assert empty.returncode == 0, empty.stderr
    assert "nothing to check: no captured data in the window" in empty.stdout
    unknown = sagegate(deployed, "monitor", "run", "--endpoint", "no-such-endpoint")
    assert unknown.returncode == 2
    assert "--endpoint no-such-endpoint: no model YAML" in unknown.stderr
    backwards = sagegate(
        deployed, "monitor", "run", "--endpoint", ENDPOINT, "--since", "2026-01-02", "--until", "2026-01-01"
    )
    assert backwards.returncode == 2 and "is not after --since" in backwards.stderr


def test_the_monitoring_schedule_fires_the_monitor_on_the_window_ending_at_its_time(deployed: StateHome) -> None:
    from pipelines.monitor import list_reports
    from pipelines.schedules import LocalFire, model_schedules

    home = deployed
    (*_, monitoring) = model_schedules(load_config(MODELS / "friedman1.yaml"), PROJECT, str(MODELS / "friedman1.yaml"))
    assert monitoring.kind == "monitoring"
    before = len(list_reports(home, ENDPOINT))
    at = datetime.now(UTC).replace(microsecond=0)
    lines: list[str] = []
    LocalFire(home, PROJECT, lines.append)(monitoring, at)
    assert re.search(r"drift-monitoring: exit [01]: ", lines[0]), lines
    reports = list_reports(home, ENDPOINT)
    assert len(reports) == before + 1
    assert reports[-1]["end_time"] == at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert reports[-1]["start_time"] == (at - timedelta(minutes=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
