"""Local endpoints served for real: the gateway and model servers as processes on 127.0.0.1, reached
with an unmodified boto3 sagemaker-runtime client and the SDK's Predictor."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import joblib
import numpy as np
import pandas as pd
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.local.endpoints import EndpointManager
from pipelines.local.gateway import running_gateway, start_gateway, stop_gateway
from pipelines.provision import provision_local, with_overrides
from pipelines.state import Project, StateHome
from tests.gate_fixtures import ROOT, breast_cancer

PROJECT = Project()
SERVERLESS = "sagegate-development-breast-cancer-serverless"
REALTIME = "sagegate-development-breast-cancer-realtime"
DATA = pd.read_csv(ROOT / "data" / "breast_cancer.csv")
FEATURES = [c for c in DATA.columns if c != "label"]
ROWS = DATA[FEATURES].head(5)


def write_model(home: StateHome, key: str, trees: int) -> str:
    """A model.tar.gz like the training job's: a fitted sklearn Pipeline + metadata.json."""
    model = Pipeline([("scale", StandardScaler()), ("model", RandomForestClassifier(trees, random_state=0))])
    model.fit(DATA[FEATURES], DATA["label"])
    archive = home.s3 / PROJECT.bucket / key
    archive.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"features": FEATURES, "task": "classification", "target": "label", "classes": [0, 1]}
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in (("model.joblib", None), ("metadata.json", json.dumps(metadata).encode())):
            if payload is None:
                buffer = io.BytesIO()
                joblib.dump(model, buffer)
                payload = buffer.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return f"s3://{PROJECT.bucket}/{key}"


def register(home: StateHome, trees: int) -> str:
    import mlflow

    uri = write_model(home, f"models/breast-cancer/t{trees}-{time.monotonic_ns()}/output/model.tar.gz", trees)
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    if not client.search_registered_models("name='sagegate-development-breast-cancer'"):
        client.create_registered_model("sagegate-development-breast-cancer")
    version = client.create_model_version(
        "sagegate-development-breast-cancer", source=uri, tags={"model_data_uri": uri}
    )
    return str(version.version)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    home = StateHome(tmp_path_factory.mktemp("serving") / "state").ensure()
    patch = pytest.MonkeyPatch()
    patch.setenv("SAGEGATE_SCALE_IN_COOLDOWN", "2")
    first = register(home, 20)
    provision_local(with_overrides(breast_cancer(), {"max_concurrency": 2}), PROJECT, home, first)
    provision_local(breast_cancer("deployment.type=realtime", "deployment.scale_in_cooldown=2"), PROJECT, home, first)
    info = start_gateway(home, PROJECT)
    yield home, info
    stop_gateway(home)
    patch.undo()


def runtime(info: dict):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=info["url"],
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 0}, max_pool_connections=32),
    )


def metrics(home: StateHome, until: Callable[[dict], bool] = lambda m: True, timeout: float = 15) -> dict:
    """The gateway's metrics file (rewritten every 0.25 s), once `until` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = json.loads((home.root / "serving" / "metrics.json").read_text())
        if until(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway's metrics did not reach the expected state in {timeout} s: {snapshot}")
        time.sleep(0.1)


def csv(rows: pd.DataFrame) -> str:
    return rows.to_csv(header=False, index=False)


def test_boto3_invoke_in_every_content_type(served) -> None:
    _, info = served
    client = runtime(info)
    expected = None
    bodies = {
        "text/csv": csv(ROWS),
        "application/json": json.dumps({"instances": ROWS.values.tolist()}),
        "application/x-npy": (lambda b: (np.save(b, ROWS.values), b.getvalue())[1])(io.BytesIO()),
    }
    for content_type, body in bodies.items():
        response = client.invoke_endpoint(EndpointName=SERVERLESS, ContentType=content_type, Body=body)
        assert response["InvokedProductionVariant"] == "AllTraffic"
        predictions = json.loads(response["Body"].read())["predictions"]
        assert len(predictions) == 5
        expected = expected or predictions
        assert predictions == expected
    records = client.invoke_endpoint(
        EndpointName=SERVERLESS, ContentType="application/json", Body=ROWS.to_json(orient="records")
    )
    assert json.loads(records["Body"].read())["predictions"] == expected
    as_csv = client.invoke_endpoint(
        EndpointName=SERVERLESS, ContentType="text/csv", Accept="text/csv", Body=csv(ROWS.head(1)),
        CustomAttributes="probabilities=true",
    )  # fmt: skip
    cells = as_csv["Body"].read().decode().strip().split(",")
    assert len(cells) == 3 and abs(float(cells[1]) + float(cells[2]) - 1) < 1e-9
    assert as_csv["CustomAttributes"] == "probabilities=true"


def test_sagemaker_sdk_predictor(served) -> None:
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import CSVSerializer

    _, info = served
    session = sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"),
        sagemaker_runtime_client=runtime(info),
        sagemaker_client=boto3.client(
            "sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        ),
    )  # fmt: skip
    predictor = sagemaker.predictor.Predictor(
        SERVERLESS, sagemaker_session=session, serializer=CSVSerializer(), deserializer=JSONDeserializer()
    )
    assert len(predictor.predict(ROWS.values)["predictions"]) == 5


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("text/csv", "1,2,3", 400, "expected 30 features per row, got 3"),
        ("text/csv", "x," * 29 + "x", 400, "CSV values must be numbers"),
        ("text/plain", "1", 415, "unsupported content type 'text/plain'"),
        ("application/json", "{not json", 400, "body is not valid JSON"),
        ("application/json", json.dumps({"instances": [[None] * 30]}), 400, "row 0 has a missing or non-finite value"),
        ("application/json", json.dumps([{"mean_radius": 1}]), 400, "record 0 is missing feature(s) mean_texture"),
        ("application/x-npy", "not npy", 400, "not a readable .npy array"),
    ],
)
def test_bad_requests_get_model_errors_naming_the_problem(served, content_type, body, status, message) -> None:
    client = runtime(served[1])
    with pytest.raises(client.exceptions.ModelError) as error:
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType=content_type, Body=body)
    assert error.value.response["OriginalStatusCode"] == status
    assert message in error.value.response["OriginalMessage"]


def test_unknown_endpoint_empty_and_huge_bodies(served) -> None:
    client = runtime(served[1])
    with pytest.raises(client.exceptions.ValidationError, match="Endpoint nope of account 123456789012 not found"):
        client.invoke_endpoint(EndpointName="nope", ContentType="text/csv", Body="1")
    with pytest.raises(client.exceptions.ClientError, match="exceeds 6 MB"):
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=b"1," * (3_200_000))
    with pytest.raises(client.exceptions.ModelError, match="empty request body"):
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=b"")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    content_type=st.sampled_from(["text/csv", "application/json", "application/x-npy", "image/png", ""]),
)
def test_fuzzed_bodies_never_crash_the_server(served, body, content_type) -> None:
    home, info = served
    client = runtime(info)
    try:
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType=content_type or "text/csv", Body=body)
    except client.exceptions.ModelError as error:
        assert 400 <= error.response["OriginalStatusCode"] < 500
    except client.exceptions.ThrottlingException:
        pass
    assert running_gateway(home) is not None


def test_serverless_max_concurrency_throttles_like_aws(served) -> None:
    home, info = served
    client = runtime(info)
    body = csv(pd.concat([ROWS] * 400))  # slow enough to overlap

    def call(_: int) -> str:
        try:
            client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=body)
            return "ok"
        except client.exceptions.ClientError as error:
            return error.response["Error"]["Code"]

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(call, range(24)))
    assert outcomes.count("ok") >= 2
    assert "ThrottlingException" in outcomes
    assert set(outcomes) <= {"ok", "ThrottlingException"}
    assert metrics(home, lambda m: m["throttled"].get(SERVERLESS, 0) >= 1)["throttled"][SERVERLESS] >= 1


def test_realtime_scales_to_zero_and_back(served) -> None:
    home, info = served
    client = runtime(info)
    client.invoke_endpoint(EndpointName=REALTIME, ContentType="text/csv", Body=csv(ROWS))
    component = EndpointManager(home, PROJECT).snapshot()["inference_components"][
        "sagegate-development-breast-cancer-component"
    ]
    model = component["Specification"]["ModelName"]
    server = metrics(home, lambda m: m["servers"].get(model, {}).get("starts", 0) >= 1)["servers"][model]
    pid, starts = server["pid"], server["starts"]
    assert server["running"] and pid
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # cooldown 2 s: the process must go away
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the idle model server was not stopped")
    began = time.monotonic()
    client.invoke_endpoint(EndpointName=REALTIME, ContentType="text/csv", Body=csv(ROWS))
    cold = time.monotonic() - began
    after = metrics(home, lambda m: m["servers"][model]["starts"] == starts + 1)["servers"][model]
    assert after["starts"] == starts + 1 and after["pid"] != pid  # a new process answered the first request
    assert len(after["cold_starts_seconds"]) == min(10, starts + 1)  # this request was the recorded cold start
    assert 0 < after["cold_starts_seconds"][-1] <= cold


def test_killed_model_server_is_restarted_under_load(served) -> None:
    home, info = served
    client = runtime(info)
    client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    running = metrics(home, lambda m: any(s["running"] and s["pid"] for s in m["servers"].values()))
    pid = next(s["pid"] for s in running["servers"].values() if s["running"] and s["pid"])
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS.head(1)))
            except client.exceptions.ClientError as error:
                errors.append(error.response["Error"]["Code"])

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(0.5)
    os.killpg(pid, signal.SIGKILL)
    time.sleep(3)
    stop.set()
    worker.join()
    after = client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    assert len(json.loads(after["Body"].read())["predictions"]) == 5
    assert set(errors) <= {"ModelError", "ThrottlingException"}


def test_sixteen_clients_and_an_update_while_serving_drop_nothing(served) -> None:
    home, info = served
    client = runtime(info)
    second = register(home, 30)
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.invoke_endpoint(EndpointName=REALTIME, ContentType="text/csv", Body=csv(ROWS.head(2)))
                results.append("ok")
            except client.exceptions.ClientError as error:
                results.append(error.response["Error"]["Code"])

    threads = [threading.Thread(target=load) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    updated = provision_local(
        breast_cancer("deployment.type=realtime", "deployment.scale_in_cooldown=2"), PROJECT, home, second
    )
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    assert updated["Updated"] and updated["Version"] == second
    assert results and set(results) == {"ok"}, {r for r in results if r != "ok"}


def test_ab_variants_split_traffic_and_target_variant_forces_one(served) -> None:
    home, info = served
    exe = Path(sys.executable).parent / "sagegate"
    environment = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    created = subprocess.run(
        [str(exe), "provision", "endpoint", "--model", "breast-cancer", "--ab", "1=0.5,2=0.5", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    client = runtime(info)
    seen = [
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS.head(1)))[
            "InvokedProductionVariant"
        ]
        for _ in range(60)
    ]
    assert 10 < seen.count("v1") < 50 and seen.count("v1") + seen.count("v2") == 60
    forced = client.invoke_endpoint(
        EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS.head(1)), TargetVariant="v2"
    )
    assert forced["InvokedProductionVariant"] == "v2"
    expected = {"v1": seen.count("v1"), "v2": seen.count("v2") + 1}
    metrics(home, lambda m: m["invocations"].get(SERVERLESS, {}).get("v2") == expected["v2"])
    shown = subprocess.run(
        [str(exe), "endpoints", "show", SERVERLESS], capture_output=True, text=True, env=environment, check=True
    )
    counts = {v["VariantName"]: v["Invocations"] for v in json.loads(shown.stdout)["ProductionVariants"]}
    assert counts == expected
    bad = subprocess.run(
        [str(exe), "provision", "endpoint", "--model", "breast-cancer", "--ab", "1=0.5"],
        capture_output=True, text=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    assert bad.returncode == 2 and "at least two versions" in bad.stderr


def test_endpoints_survive_a_gateway_restart(served) -> None:
    home, _ = served
    stop_gateway(home)
    info = start_gateway(home, PROJECT)
    response = runtime(info).invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    assert len(json.loads(response["Body"].read())["predictions"]) == 5
    assert Path(home.root / "serving" / "gateway.json").is_file()
