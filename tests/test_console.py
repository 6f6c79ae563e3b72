"""`sagegate console` in a real headless Chromium (Debian's, driven by Playwright): the pages render
from a real state folder, graphs show failed states, a running pipeline updates without a reload,
and the two actions need the token and a CSRF token. Security checks go over plain HTTP."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from pipelines.config import load_config
from pipelines.local.gateway import start_gateway, stop_gateway
from pipelines.local_gate import list_executions, run_gate
from pipelines.local_run import list_records, run_local
from pipelines.state import Project, StateHome
from tests.conftest import MODELS, ROOT, running_console, wait_for

PROJECT = Project()
CHROMIUM = os.environ.get("SAGEGATE_CHROMIUM", "/usr/bin/chromium")
# the flags that keep Chromium off the network on a machine without one
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # fmt: skip
MODEL = "sagegate-development-breast-cancer"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A state folder with a deployed version, a run the quality gate failed, a gate execution that
    deployed and one that rejected; the console serving it as `sagegate console` does."""
    home = StateHome(tmp_path_factory.mktemp("console") / "state").ensure()
    config = load_config(MODELS / "breast-cancer.yaml")
    good = run_local(config, PROJECT, home)
    failed = run_local(load_config(MODELS / "breast-cancer.yaml", ["quality_gate.metrics.accuracy.min=0.999"]),
                       PROJECT, home)  # fmt: skip
    deployed = run_gate(config, PROJECT, home, good.registered_version)
    strict = load_config(MODELS / "breast-cancer.yaml", ["quality_gate.metrics.f1.min=0.999"])
    rejected = run_gate(strict, PROJECT, home, good.registered_version)
    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=start_gateway(home, PROJECT)["url"], region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip
    row = (ROOT / "data" / "breast_cancer.csv").read_text().splitlines()[1].rsplit(",", 1)[0]
    for _ in range(3):
        runtime.invoke_endpoint(EndpointName=deployed.endpoint, ContentType="text/csv", Body=row)
    with pytest.raises(ClientError, match="ModelError"):
        runtime.invoke_endpoint(EndpointName=deployed.endpoint, ContentType="text/csv", Body="1,2,not-a-number")
    with running_console(home) as (base, token):
        yield {"home": home, "base": base, "token": token, "good": good, "failed": failed,
               "deployed": deployed, "rejected": rejected}  # fmt: skip
    stop_gateway(home)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context; fails the test on any script error or CSP violation it logs."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert not errors, errors


def test_every_page_renders_without_script_errors(world, page):
    base = world["base"]
    good, deployed = world["good"], world["deployed"]
    page.goto(base + "/")
    assert page.locator("#runs tbody tr").count() == 2
    assert page.locator("#executions tbody tr").count() == 2
    assert page.locator("header .badge").inner_text() == "read-only"  # no token: no actions
    assert page.locator("#start-run").count() == 0
    page.click(f"a[href='/runs/{good.attempt}']")
    page.wait_for_selector("#graph svg g.node")
    steps = page.locator("#steps tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in steps] == [s["name"] for s in good.graph["steps"]]
    assert ["TrainModel", "EvaluateModel"] in good.graph["edges"]  # the SDK executor's graph, recorded
    assert page.locator("svg g.node[data-status=Succeeded]").count() == len(good.steps)
    page.goto(base + "/models")
    assert "onnx" in page.locator("#models").inner_text()  # which runtime serves the version
    page.click(f"a[href='/models/{MODEL}/{good.registered_version}']")
    assert "champion" in page.locator("h1").inner_text()
    images = page.locator(".plots img")
    assert images.count() >= 2
    # every plot arrives (from the version's MLflow artifacts) as a decodable image
    loaded = "() => [...document.querySelectorAll('.plots img')].every(i => i.complete && i.naturalWidth > 0)"
    page.wait_for_function(loaded)
    page.goto(base + "/endpoints")
    page.click(f"a[href='/endpoints/{deployed.endpoint}']")
    assert "InService" in page.locator("h1").inner_text()
    variant = page.locator("#variants tbody tr").first.locator("td").all_inner_texts()
    invocations, errors, latency = variant[5:8]
    assert variant[4] == "onnx" and (invocations, errors) == ("4", "1")  # the gateway's counters
    assert re.fullmatch(r"[\d.]+ / [\d.]+ ms \(4 requests\)", latency), latency
    assert page.locator("#servers tbody tr").first.locator("td").nth(3).inner_text() == "1"  # one cold start


def test_failed_run_graph_shows_the_failed_step(world, page):
    failed = world["failed"]
    assert failed.status == "Failed"
    page.goto(f"{world['base']}/runs/{failed.attempt}")
    node = page.locator("svg g.node[data-id=QualityGateFailed]")
    assert node.get_attribute("data-status") == "Failed"
    assert "status-Failed" in node.get_attribute("class")
    assert page.locator("svg g.node[data-id=RegisterMlflowModel]").get_attribute("data-status") == "NotStarted"
    assert page.locator("#run-status").inner_text() == "Failed"
    page.locator("svg g.node[data-id=TrainModel]").click()
    assert page.locator("#step-detail h3").inner_text().startswith("TrainModel: Succeeded")
    assert page.locator("#step-detail pre").inner_text().strip()  # the job's log tail
    assert "accuracy" in page.locator("#steps tr[data-step=QualityGateFailed]").inner_text()


def test_gate_graph_shows_the_path_and_the_failed_state(world, page):
    rejected = world["rejected"]
    assert rejected.verdict == "rejected"
    page.goto(f"{world['base']}/executions/{rejected.name}")
    assert page.locator("svg g.node[data-id=Rejected]").get_attribute("data-status") == "Failed"
    assert page.locator("svg g.node[data-id=CreateRealtimeModel]").get_attribute("data-status") == "NotStarted"
    assert page.locator("svg path.edge-taken[data-from=ChooseDeployment][data-to=Rejected]").count() == 1
    page.locator("svg g.node[data-id=EvaluateModel]").click()
    row = page.locator("#state-EvaluateModel")
    assert "selected" in row.get_attribute("class")
    assert '"model": "breast-cancer"' in row.locator("details").first.inner_text()  # the state's input
    assert page.locator("#events tbody tr").count() == len(rejected.events)


def test_start_run_needs_the_token_and_its_page_updates_live(world, page):
    base, home = world["base"], world["home"]
    before = {record.attempt for record in list_records(home)[0]}
    page.goto(f"{base}/runs?token={world['token']}")
    assert urlsplit(page.url).query == ""  # the token left the address bar for an HttpOnly cookie
    assert page.locator("header .badge").inner_text() == "actions enabled"
    page.select_option("#start-run select", "breast-cancer")
    page.click("#start-run button")
    page.wait_for_url(re.compile(r"/runs/[0-9a-f]{12}$"))
    attempt = page.url.rsplit("/", 1)[1]
    assert attempt not in before
    page.evaluate("window.sagegateMarker = 'same page'")
    assert page.locator("#run-status").inner_text() == "Executing"
    page.wait_for_selector("svg g.node[data-id=TrainModel][data-status=Succeeded]", timeout=90_000)
    page.wait_for_function("() => document.getElementById('run-status').textContent === 'Succeeded'", timeout=90_000)
    assert page.evaluate("window.sagegateMarker") == "same page"  # updated by the stream, not reloaded
    assert page.locator("svg g.node[data-status=Succeeded]").count() == 5  # all but the Fail step


def test_rerun_gate_from_the_execution_page(world, page):
    base, home = world["base"], world["home"]
    deployed = world["deployed"]
    page.goto(f"{base}/executions/{deployed.name}?token={world['token']}")
    page.click("#rerun button")
    page.wait_for_url(re.compile(r"/executions\?started="))
    started = page.locator("#started code").inner_text()
    record = wait_for(
        lambda: next((r for r in list_executions(home)[0] if r.name == started), None), "the re-run gate", 120
    )
    assert record.status == "SUCCEEDED" and record.input["version"] == deployed.input["version"]


# ---- security over plain HTTP ------------------------------------------------------------------


def test_actions_refuse_without_token_or_csrf(world):
    base, home = world["base"], world["home"]
    before = len(list_records(home)[0])
    assert requests.post(f"{base}/runs", data={"model": "breast-cancer"}, timeout=10).status_code == 403
    cookies = {"sagegate_token": world["token"]}
    for csrf in ("", "0" * 64):
        answer = requests.post(f"{base}/runs", data={"model": "breast-cancer", "csrf": csrf}, cookies=cookies,
                               timeout=10, allow_redirects=False)  # fmt: skip
        assert answer.status_code == 403 and "CSRF" in answer.text
    wrong = requests.post(f"{base}/runs", data={"model": "breast-cancer", "csrf": "x"},
                          cookies={"sagegate_token": "guess"}, timeout=10)  # fmt: skip
    assert wrong.status_code == 403
    rerun = requests.post(f"{base}/executions/{world['deployed'].name}/rerun", timeout=10)
    assert rerun.status_code == 403
    assert len(list_records(home)[0]) == before


def test_token_link_sets_a_strict_cookie_and_a_wrong_token_is_refused(world):
    answer = requests.get(f"{world['base']}/runs?token={world['token']}&x=1", timeout=10, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/runs?x=1"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert requests.get(f"{world['base']}/?token=nope", timeout=10).status_code == 403


def test_headers_hosts_and_hostile_paths(world):
    base = world["base"]
    answer = requests.get(base + "/", timeout=10)
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["x-frame-options"] == "DENY" and answer.headers["referrer-policy"] == "no-referrer"
    # DNS rebinding: a page of another site resolving to 127.0.0.1 is refused
    assert requests.get(base + "/", headers={"Host": "evil.example"}, timeout=10).status_code == 400
    good = world["good"]
    hostile = [
        "/runs/..%2F..%2Fapi-token",
        "/runs/%2e%2e",
        "/runs/" + "a" * 500,
        "/executions/..%2Fexecutions",
        f"/models/{MODEL}/{good.registered_version}/plots/..%2F..%2F..%2Fmlflow.db",
        f"/models/{MODEL}/{good.registered_version}/plots/MLmodel",
        f"/endpoints/{world['deployed'].endpoint}/reports/%2e%2e",
        f"/endpoints/{world['deployed'].endpoint}/reports/..%2F..%2Fapi-token",
        "/static/..%2F..%2Fapp.py",
    ]
    for path in hostile:
        answer = requests.get(base + path, timeout=10)
        assert answer.status_code == 404, (path, answer.status_code)
        assert world["token"] not in answer.text


def test_console_listens_on_loopback_only(world):
    port = int(urlsplit(world["base"]).port)
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = [line.split()[1] for line in listening if line.split()[3] == "0A"]  # LISTEN
    ours = [address for address in local if int(address.split(":")[1], 16) == port]
    assert ours == ["0100007F:" + f"{port:04X}"]  # 127.0.0.1 only


def test_a_corrupt_run_record_is_a_page_naming_the_file(world):
    broken = world["home"].runs / "0123456789ab.json"
    broken.write_text('{"run_id": "0123456789ab", "status": ')  # cut mid-write (by hand: sagegate writes atomically)
    try:
        answer = requests.get(f"{world['base']}/runs/0123456789ab", timeout=10)
        assert answer.status_code == 500 and str(broken) in html.unescape(answer.text)
        assert requests.get(f"{world['base']}/runs", timeout=10).status_code == 200  # the list skips it, saying so
    finally:
        broken.unlink()
