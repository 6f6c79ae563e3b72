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
from typing import Any

import boto3
import joblib
import numpy as np
import pandas as pd
import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.local.endpoints import EndpointManager
from pipelines.local.gateway import running_gateway, start_gateway, stop_gateway
from pipelines.local.s3 import LocalS3
from pipelines.local.serving_metrics import metrics_path
from pipelines.provision import provision_local, with_overrides
from pipelines.state import Project, StateHome
from pipelines.statefiles import process_alive, read_json
from tests.conftest import wait_for
from tests.gate_fixtures import ROOT, breast_cancer, trained_with

PROJECT = Project()
SERVERLESS = "sagegate-development-breast-cancer-serverless"
REALTIME = "sagegate-development-breast-cancer-realtime"
DATA = pd.read_csv(ROOT / "data" / "breast_cancer.csv")
FEATURES = [c for c in DATA.columns if c != "label"]
ROWS = DATA[FEATURES].head(5)


def write_model(home: StateHome, key: str, trees: int, project: Project = PROJECT) -> str:
    """A model.tar.gz like the training job's: a fitted sklearn Pipeline + metadata.json."""
    model = Pipeline([("scale", StandardScaler()), ("model", RandomForestClassifier(trees, random_state=0))])
    model.fit(DATA[FEATURES], DATA["label"])
    archive = io.BytesIO()
    metadata = {"features": FEATURES, "task": "classification", "target": "label", "classes": [0, 1]}
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, payload in (("model.joblib", None), ("metadata.json", json.dumps(metadata).encode())):
            if payload is None:
                buffer = io.BytesIO()
                joblib.dump(model, buffer)
                payload = buffer.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with LocalS3(home, project.region) as s3:
        s3.ensure_bucket(project.bucket)
        s3.client.put_object(Bucket=project.bucket, Key=key, Body=archive.getvalue())
    return f"s3://{project.bucket}/{key}"


def register(home: StateHome, trees: int, project: Project = PROJECT) -> str:
    import mlflow

    key = f"models/breast-cancer/t{trees}-{time.monotonic_ns()}/output/model.tar.gz"
    uri = write_model(home, key, trees, project)
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    name = project.registered_model("breast-cancer")
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    tags = {"model_data_uri": uri, **trained_with()}  # as a training job here records them
    return str(client.create_model_version(name, source=uri, tags=tags).version)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One state folder and gateway for the module. The fixture's endpoints (PROJECT's serverless,
    max concurrency 2, and realtime, cooldown 2 s) are only invoked; a test that changes endpoints
    creates its own under its own project prefix, so no test depends on another's order."""
    home = StateHome(tmp_path_factory.mktemp("serving") / "state").ensure()
    patch = pytest.MonkeyPatch()
    patch.setenv("SAGEGATE_SCALE_IN_COOLDOWN", "2")
    first = register(home, 20)
    provision_local(with_overrides(breast_cancer(), {"max_concurrency": 2}), PROJECT, home, first)
    provision_local(breast_cancer("deployment.type=realtime", "deployment.scale_in_cooldown=2"), PROJECT, home, first)
    start_gateway(home, PROJECT)
    yield home
    stop_gateway(home)
    patch.undo()


def runtime(home: StateHome):
    """A boto3 client on the state folder's gateway (the running one, or a new one if a test stopped it)."""
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=start_gateway(home, PROJECT)["url"],
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 0}, max_pool_connections=32),
    )


def metrics(home: StateHome, until: Callable[[dict], bool] = lambda m: True, timeout: float = 15) -> dict:
    """The gateway's metrics file (rewritten every 0.25 s), once `until` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = read_json(metrics_path(home))
        if until(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway's metrics did not reach the expected state in {timeout} s: {snapshot}")
        time.sleep(0.1)


def csv(rows: pd.DataFrame) -> str:
    return rows.to_csv(header=False, index=False)


def test_boto3_invoke_in_every_content_type(served) -> None:
    client = runtime(served)
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

    session = sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"),
        sagemaker_runtime_client=runtime(served),
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
    client = runtime(served)
    with pytest.raises(client.exceptions.ModelError) as error:
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType=content_type, Body=body)
    assert error.value.response["OriginalStatusCode"] == status
    assert message in error.value.response["OriginalMessage"]


def test_unknown_endpoint_empty_and_huge_bodies(served) -> None:
    client = runtime(served)
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
    home = served
    client = runtime(home)
    try:
        client.invoke_endpoint(EndpointName=SERVERLESS, ContentType=content_type or "text/csv", Body=body)
    except client.exceptions.ModelError as error:
        assert 400 <= error.response["OriginalStatusCode"] < 500
    except client.exceptions.ThrottlingException:
        pass
    assert running_gateway(home) is not None


def test_serverless_max_concurrency_throttles_like_aws(served) -> None:
    home = served
    client = runtime(home)
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
    home = served
    client = runtime(home)
    client.invoke_endpoint(EndpointName=REALTIME, ContentType="text/csv", Body=csv(ROWS))
    component = EndpointManager(home, PROJECT).snapshot()["inference_components"][
        PROJECT.inference_component_name("breast-cancer")
    ]
    model = component["Specification"]["ModelName"]
    server = metrics(home, lambda m: m["servers"].get(model, {}).get("starts", 0) >= 1)["servers"][model]
    pid, starts = server["pid"], server["starts"]
    assert server["running"] and pid
    wait_for(lambda: not process_alive(str(pid)), "the idle model server (cooldown 2 s) stopping", timeout=15)
    client.invoke_endpoint(EndpointName=REALTIME, ContentType="text/csv", Body=csv(ROWS))
    after = metrics(home, lambda m: m["servers"][model]["starts"] == starts + 1)["servers"][model]
    assert after["running"] and after["pid"] != pid  # a new process answered the first request
    assert len(after["cold_starts_seconds"]) == min(10, starts + 1)  # and its start was recorded as a cold start


def test_model_latency_leaves_out_the_model_servers_cold_start(served) -> None:
    """SageMaker's ModelLatency never counts provisioning: the request that started a model server
    records the start as a cold start, and only the model's answer as its latency (what a rollout's
    p99 latency alarm judges)."""
    home = served
    cold = Project(prefix="coldtest")  # its own endpoint: a model no request has reached
    provision_local(breast_cancer("deployment.type=realtime"), cold, home, register(home, 20, cold))
    runtime(home).invoke_endpoint(
        EndpointName=cold.endpoint_name("breast-cancer", "realtime"), ContentType="text/csv", Body=csv(ROWS)
    )
    component = cold.inference_component_name("breast-cancer")
    model = EndpointManager(home, cold).snapshot()["inference_components"][component]["Specification"]["ModelName"]
    seen = metrics(home, lambda m: m["models"].get(model, {}).get("invocations") == 1)
    (start,) = seen["servers"][model]["cold_starts_seconds"]
    assert seen["models"][model]["p99_ms"] < 1000 * start / 2, (seen["models"][model], start)


class Load:
    """Clients invoking an endpoint in a loop until stopped; every outcome recorded."""

    def __init__(self, client, endpoint: str, clients: int, rows: int) -> None:
        self.outcomes: list[str] = []
        self._stop = threading.Event()

        def invoke() -> None:
            while not self._stop.is_set():
                try:
                    client.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=csv(ROWS.head(rows)))
                    self.outcomes.append("ok")
                except client.exceptions.ClientError as error:
                    self.outcomes.append(error.response["Error"]["Code"])
                except BotoCoreError as error:  # the gateway itself went away
                    self.outcomes.append(type(error).__name__)

        self._threads = [threading.Thread(target=invoke) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def served_at_least(self, count: int) -> Callable[[], bool]:
        return lambda: self.outcomes.count("ok") >= count

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.outcomes


def test_killed_model_server_is_restarted_under_load(served) -> None:
    home = served
    client = runtime(home)
    client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    state = EndpointManager(home, PROJECT).snapshot()
    config = state["endpoint_configs"][state["endpoints"][SERVERLESS]["EndpointConfigName"]]
    model = config["ProductionVariants"][0]["ModelName"]
    server = metrics(home, lambda m: m["servers"].get(model, {}).get("running", False))["servers"][model]
    load = Load(client, SERVERLESS, clients=2, rows=1)
    try:
        wait_for(load.served_at_least(20), "the load being served before the kill")
        os.killpg(server["pid"], signal.SIGKILL)
        metrics(home, lambda m: m["servers"][model]["starts"] > server["starts"] and m["servers"][model]["running"])
        served_before = load.outcomes.count("ok")
        wait_for(load.served_at_least(served_before + 20), "the load being served by the restarted server")
    finally:
        outcomes = load.stop()
    assert set(outcomes) <= {"ok", "ModelError", "ThrottlingException"}, set(outcomes)
    after = client.invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    assert len(json.loads(after["Body"].read())["predictions"]) == 5
    # exactly one server for the model: concurrent restarts left no orphan behind
    assert len(server_sessions(home.serving / "models" / model)) == 1


def server_sessions(folder: Path) -> set[int]:
    """The sessions of the model-server processes serving from `folder` (each server is its own session)."""
    sessions = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder) in cmdline.read_bytes().decode(errors="replace"):
                sessions.add(os.getsid(int(cmdline.parent.name)))
        except (OSError, ProcessLookupError):
            continue
    return sessions


def test_sixteen_clients_and_an_update_while_serving_drop_nothing(served) -> None:
    home = served
    rollout = Project(prefix="rollout")  # its own endpoint: the update changes nothing other tests invoke
    config = breast_cancer("deployment.type=realtime", "deployment.scale_in_cooldown=30")
    first, second = register(home, 20, rollout), register(home, 30, rollout)
    provision_local(config, rollout, home, first)
    endpoint = rollout.endpoint_name("breast-cancer", "realtime")
    component = rollout.inference_component_name("breast-cancer")
    load = Load(runtime(home), endpoint, clients=16, rows=2)
    try:
        wait_for(load.served_at_least(100), "16 clients being served before the update")
        updated = provision_local(config, rollout, home, second)
        new_model = EndpointManager(home, rollout).snapshot()["inference_components"][component]["Specification"][
            "ModelName"
        ]
        metrics(home, lambda m: m["servers"].get(new_model, {}).get("starts", 0) >= 1)  # the new version serves
        served_before = load.outcomes.count("ok")
        wait_for(load.served_at_least(served_before + 100), "16 clients being served after the update")
    finally:
        outcomes = load.stop()
    assert updated["Updated"] and updated["Version"] == second
    assert set(outcomes) == {"ok"}, {r for r in outcomes if r != "ok"}


def test_ab_variants_split_traffic_and_target_variant_forces_one(served) -> None:
    home = served
    ab = Project(prefix="abtest")  # its own endpoint and registered versions
    first, second = register(home, 20, ab), register(home, 30, ab)
    endpoint = ab.endpoint_name("breast-cancer", "serverless")
    exe = Path(sys.executable).parent / "sagegate"
    environment = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    created = subprocess.run(
        [str(exe), "provision", "endpoint", "--model", "breast-cancer", "--project", "abtest",
         "--ab", f"{first}=0.5,{second}=0.5", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    client = runtime(home)
    seen = [
        client.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=csv(ROWS.head(1)))[
            "InvokedProductionVariant"
        ]
        for _ in range(60)
    ]
    first_variant, second_variant = f"v{first}", f"v{second}"
    assert 10 < seen.count(first_variant) < 50 and seen.count(first_variant) + seen.count(second_variant) == 60
    forced = client.invoke_endpoint(
        EndpointName=endpoint, ContentType="text/csv", Body=csv(ROWS.head(1)), TargetVariant=second_variant
    )
    assert forced["InvokedProductionVariant"] == second_variant
    expected = {first_variant: seen.count(first_variant), second_variant: seen.count(second_variant) + 1}
    metrics(home, lambda m: m["invocations"].get(endpoint, {}) == expected)
    shown = subprocess.run(
        [str(exe), "endpoints", "--project", "abtest", "show", endpoint],
        capture_output=True, text=True, env=environment, check=True,
    )  # fmt: skip
    counts = {v["VariantName"]: v["Invocations"] for v in json.loads(shown.stdout)["ProductionVariants"]}
    assert counts == expected
    bad = subprocess.run(
        [str(exe), "provision", "endpoint", "--model", "breast-cancer", "--project", "abtest", "--ab", f"{first}=0.5"],
        capture_output=True, text=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    assert bad.returncode == 2 and "at least two versions" in bad.stderr
    # the YAML's deployment.variants, when no --ab is given: the same endpoint, re-split
    variants = f"deployment.variants=[{{version: {first}, weight: 0.9}}, {{version: {second}, weight: 0.1}}]"
    resplit = subprocess.run(
        [str(exe), "provision", "endpoint", "--model", "breast-cancer", "--project", "abtest", "--set", variants],
        capture_output=True, text=True, cwd=ROOT, env=environment,
    )  # fmt: skip
    assert resplit.returncode == 0, resplit.stderr
    shown = subprocess.run(
        [str(exe), "endpoints", "--project", "abtest", "show", endpoint],
        capture_output=True, text=True, env=environment, check=True,
    )  # fmt: skip
    split = {v["VariantName"]: v["InitialVariantWeight"] for v in json.loads(shown.stdout)["ProductionVariants"]}
    assert split == {first_variant: 0.9, second_variant: 0.1}


def test_a_shadow_variant_gets_copies_and_never_changes_the_answer(served) -> None:
    home = served
    shadowed = Project(prefix="shadowtest")
    first, second = register(home, 20, shadowed), register(home, 30, shadowed)
    endpoint = shadowed.endpoint_name("breast-cancer", "realtime")
    exe = Path(sys.executable).parent / "sagegate"
    environment = {**os.environ, "SAGEGATE_HOME": str(home.root)}

    def sagegate(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(exe), *args, "--project", "shadowtest"], capture_output=True, text=True, cwd=ROOT,
                              env=environment)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    realtime = ("provision", "endpoint", "--model", "breast-cancer", "--set", "deployment.type=realtime")
    sagegate(*realtime, "--ab", f"{second}=0.5,{first}=0.5")  # first, what the production version answers alone
    client = runtime(home)
    bodies = [csv(DATA[FEATURES].iloc[[i]]) for i in range(0, 400, 10)]

    def answers(**pinned: str) -> list[tuple[bytes, str]]:
        replies = [client.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=b, **pinned)
                   for b in bodies]  # fmt: skip
        return [(reply["Body"].read(), reply["InvokedProductionVariant"]) for reply in replies]

    alone, shadowed_answers = answers(TargetVariant=f"v{second}"), answers(TargetVariant=f"v{first}")
    labels = lambda replies: [json.loads(body)["predictions"] for body, _ in replies]  # noqa: E731
    agreement = sum(a == b for a, b in zip(labels(alone), labels(shadowed_answers), strict=True)) / len(bodies)
    shadow = f"deployment.shadow={{version: {first}, sampling_percentage: 100}}"
    shown = sagegate(*realtime, "--version", second, "--set", shadow, "--json")
    assert json.loads(shown.stdout)["Version"] == f"{second} (shadow {first})"
    assert answers() == [(body, f"v{second}") for body, _ in alone]  # the caller gets production's answer only
    pairs = lambda: json.loads(sagegate("endpoints", "shadow-report", endpoint, "--json").stdout)  # noqa: E731
    report = wait_for(lambda: (r := pairs())["pairs"] == len(bodies) and r, "a pair for every request (100% sampled)")
    assert report["production_variant"] == f"v{second}" and report["shadow_variant"] == f"v{first}"
    assert report["agreement"] == round(agreement, 4)  # each copy compared with its own answer, batched or not
    assert report["shadow_errors"] == report["production_errors"] == 0 and report["shadow_ms"]["p99"] > 0
    text = sagegate("endpoints", "shadow-report", endpoint).stdout
    assert f"agreement of v{first} with v{second}: {100 * report['agreement']:.1f}%" in text


def test_shadow_copies_are_sampled_batched_in_order_and_each_error_is_its_own(tmp_path: Path) -> None:
    from pipelines.local.shadow import ShadowRoute, ShadowRunner, shadow_report, shadow_route

    home = StateHome(tmp_path / "state").ensure()
    config = {"ShadowProductionVariants": [{"VariantName": "v2", "ModelName": "m2", "InitialVariantWeight": 0.3}]}
    assert shadow_route(config, 1.0) == ShadowRoute("v2", "m2", 0.3)
    assert shadow_route(config, 0.5).sampling == 0.6 and shadow_route({}, 1.0) is None
    requests: list[bytes] = []

    def predict(body: bytes) -> tuple[int, bytes]:  # a shadow model: each CSV row's first value; refuses "x"
        rows = [line.split(",") for line in body.decode().splitlines() if line]
        if any("x" in row for row in rows):
            return 400, b'{"error": "CSV values must be numbers"}'
        return 200, json.dumps({"predictions": [float(row[0]) for row in rows]}).encode()

    def forward(model: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        requests.append(body)
        if body == b"break\n":
            raise ConnectionError("shadow model server down")
        return predict(body)

    runner = ShadowRunner(home, forward)
    route, every = ShadowRoute("v2", "m2", 0.3), ShadowRoute("v2", "m2", 1.0)
    csv_type = {"Content-Type": "text/csv", "Accept": "application/json"}
    for _ in range(2000):  # sampled at 30%
        runner.offer("sampled", "v1", route, b"1,2\n", csv_type, (200, *predict(b"1,2\n")[1:], 0.001))
    expected = []
    for index in range(300):  # every copy: two-row bodies, every 7th answered differently by production
        body = f"{index},0\n{index + 0.5},1\n".encode()
        disagree = index % 7 == 0
        answer = json.dumps({"predictions": [-1.0, -1.0] if disagree else [index, index + 0.5]}).encode()
        runner.offer("every", "v1", every, body, csv_type, (200, answer, 0.001))
        expected.append(not disagree)
    runner.offer("every", "v1", every, b"x,1\n", csv_type, (200, b'{"predictions": [1]}', 0.001))  # shadow refuses
    runner.offer("every", "v1", every, b"break\n", csv_type, (200, b'{"predictions": [1]}', 0.001))  # shadow down
    runner.close()  # drains the queue
    sampled = shadow_report(home, "sampled")
    assert 450 < sampled["pairs"] < 750  # 30% of 2000, far outside chance at 5 standard deviations
    pairs = [json.loads(line) for line in (home.serving / "shadow" / "every.jsonl").read_text().splitlines()]
    assert [p["agree"] for p in pairs[:300]] == expected  # each copy compared with its own rows, in order
    assert [p["shadow"]["status"] for p in pairs[300:]] == [400, 599]  # a refused batch was retried copy by copy
    assert len(requests) < (sampled["pairs"] + len(pairs)) / 10  # batched: far fewer requests than copies
    report = shadow_report(home, "every")
    assert report["shadow_errors"] == 2 and report["agreement"] == round(sum(expected) / 300, 4)
    assert 0 < report["shadow_latency_requests"] < report["pairs"] and report["shadow_ms"]["p99"] > 0


def test_shadow_batches_join_each_json_form_and_leave_mixed_forms_alone(tmp_path: Path) -> None:
    from pipelines.local.shadow import ShadowRoute, ShadowRunner, shadow_report

    home = StateHome(tmp_path / "state").ensure()
    requests: list[Any] = []

    def first_values(data: Any) -> list[float]:  # a shadow model: each row's first value (records: "a")
        if isinstance(data, dict):
            data = next((data[key] for key in ("instances", "inputs") if key in data), [data])
        rows = data if isinstance(data[0], list | dict) else [data]
        return [row["a"] if isinstance(row, dict) else row[0] for row in rows]

    def forward(model: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        requests.append(json.loads(body))
        return 200, json.dumps({"predictions": first_values(json.loads(body))}).encode()

    runner = ShadowRunner(home, forward)
    json_type = {"Content-Type": "application/json", "Accept": "application/json"}
    bodies = [[1, 2], {"instances": [[3, 4], [5, 6]]}, [[7, 8]], {"inputs": [[9, 10]]}, [[11, 12]]]
    records = [[{"a": 13}], {"a": 14, "b": 0}]
    route = ShadowRoute("v2", "m2", 1.0)
    for body in [*bodies, *records]:
        answer = json.dumps({"predictions": first_values(body)}).encode()
        runner.offer("e", "v1", route, json.dumps(body).encode(), json_type, (200, answer, 0.001))
    runner.close()
    assert shadow_report(home, "e")["agreement"] == 1.0  # every copy matched its own rows
    joined = [r for r in requests if isinstance(r, dict) and len(r.get("instances", [])) > 2]
    assert joined and all(isinstance(row, list) for r in joined for row in r["instances"])  # one form per request


def model_servers(home: StateHome) -> list[psutil.Process]:
    """The model server processes serving this state folder's endpoints."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if any(part.endswith("serve.py") for part in command) and any(str(home.root) in part for part in command):
            found.append(process)
    return found


def test_endpoints_survive_a_gateway_restart_which_stops_its_model_servers(served) -> None:
    """Stopping the gateway stops its model servers: none is left running without it (uvicorn's worker dies
    by the SIGTERM it re-raises, so they stop in the app's lifespan shutdown, not in a gunicorn hook)."""
    home = served
    before = running_gateway(home) or start_gateway(home, PROJECT)
    runtime(home).invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    servers = model_servers(home)
    assert servers
    assert stop_gateway(home) and not process_alive(before["process"])
    assert not [server.pid for server in servers if server.is_running() and server.status() != psutil.STATUS_ZOMBIE]
    assert running_gateway(home) is None
    response = runtime(home).invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
    assert len(json.loads(response["Body"].read())["predictions"]) == 5
    after = running_gateway(home)
    assert after is not None and after["pid"] != before["pid"]


def test_a_gateway_killed_while_writing_state_leaves_it_whole(served) -> None:
    """SIGKILL the gateway (master and worker) three times under load, while it rewrites its metrics
    four times a second: every state file stays readable, counters resume from the last snapshot,
    the endpoints are untouched, the orphaned model servers are reaped and serving resumes."""
    home = served
    endpoints_before = EndpointManager(home, PROJECT).snapshot()

    def invocations(snapshot: dict) -> int:
        return snapshot["invocations"].get(SERVERLESS, {}).get("AllTraffic", 0)

    for _ in range(3):
        before = invocations(metrics(home))
        load = Load(runtime(home), SERVERLESS, clients=2, rows=1)
        try:
            # a snapshot with 20 more invocations: restored counters are told apart from a reset
            snapshot = metrics(home, lambda m: invocations(m) >= before + 20)  # noqa: B023
            gateway = running_gateway(home)
            orphans = [s["pid"] for s in snapshot["servers"].values() if s["running"]]
            assert orphans
            os.killpg(gateway["pid"], signal.SIGKILL)
            wait_for(lambda: not process_alive(gateway["process"]), "the killed gateway exiting")  # noqa: B023
        finally:
            load.stop()
        counted = invocations(read_json(metrics_path(home)))  # a whole file, whatever the kill interrupted
        assert counted >= before + 20
        response = runtime(home).invoke_endpoint(EndpointName=SERVERLESS, ContentType="text/csv", Body=csv(ROWS))
        assert len(json.loads(response["Body"].read())["predictions"]) == 5
        for pid in orphans:
            wait_for(lambda: not process_alive(str(pid)), f"the orphaned model server {pid} being reaped")  # noqa: B023
        resumed = metrics(home, lambda m: m["pid"] != gateway["pid"])  # noqa: B023
        assert invocations(resumed) >= counted  # resumed from the last snapshot, not from zero
    assert EndpointManager(home, PROJECT).snapshot() == endpoints_before
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "sagegate"), "endpoints", "--json"],
        capture_output=True, text=True, env={**os.environ, "SAGEGATE_HOME": str(home.root)}, check=True,
    )  # fmt: skip
    assert listed.stderr == "" and SERVERLESS in {row["EndpointName"] for row in json.loads(listed.stdout)}


def test_endpoint_commands_take_their_options_before_or_after_the_subcommand() -> None:
    from pipelines.cli import build_parser

    parser = build_parser()
    for argv in (
        ["endpoints", "--project", "abtest", "--region", "eu-west-1", "show", "e"],
        ["endpoints", "show", "e", "--project", "abtest", "--region", "eu-west-1"],
        ["endpoints", "--project", "abtest", "delete", "e", "--region", "eu-west-1"],
    ):
        args = parser.parse_args(argv)
        assert (args.project, args.region, args.name) == ("abtest", "eu-west-1", "e"), argv
    listing = parser.parse_args(["endpoints", "--env", "staging"])
    assert (listing.env, listing.project) == ("staging", None)
