"""The gate's Lambda package, built the way deploy.sh builds it and run by the Lambda runtime's Python."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines import templates
from pipelines.lambda_package import LAMBDA_RUNTIME, build_package, package_digest, runtime_version

TRACKING_ARN = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/sagegate-staging"

# Run inside the unpacked package by the runtime's interpreter with no site-packages (-I -S): only
# what the zip holds is importable. Nothing here reaches the network: resolving the store is local.
RESOLVE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ.update(MLFLOW_TRACKING_URI=sys.argv[2], AWS_DEFAULT_REGION="eu-west-1", POWERTOOLS_SERVICE_NAME="gate",
                  AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", MLFLOW_DISABLE_TELEMETRY="true")
import app  # the handler module imports with the packaged dependencies
import mlflow
client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])  # the call the handler makes
store = client._tracking_client.store
registry = client._get_registry_client().store
creds = store.get_host_creds()
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "handler": callable(app.lambda_handler),
                  "store": type(store).__module__, "registry": type(registry).__module__,
                  "host": creds.host, "auth": creds.auth}))
"""


def runtime_python() -> tuple[str, str]:
    """An interpreter of the Lambda runtime's version (on PATH, or a pyenv version) and that version.
    Failing both, this interpreter: the package is then built for its version, which still shows
    that the packaged plugin resolves the ARN, though not on the runtime's exact Python."""
    wanted = runtime_version()
    candidates = [shutil.which(LAMBDA_RUNTIME)]
    if pyenv := shutil.which("pyenv"):
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        candidates += sorted(
            str(p) for p in Path(root or "/nonexistent").glob(f"versions/{wanted}*/bin/{LAMBDA_RUNTIME}")
        )
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == wanted:
            return candidate, wanted
    return sys.executable, "{}.{}".format(*sys.version_info[:2])


@pytest.fixture(scope="module")
def runtime() -> tuple[str, str]:
    return runtime_python()


@pytest.fixture(scope="module")
def evaluator_package(runtime: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_package("evaluator", tmp_path_factory.mktemp("lambda") / "evaluator.zip", python_version=runtime[1])


def test_the_package_resolves_a_sagemaker_mlflow_arn_through_the_plugin(
    evaluator_package: Path, runtime: tuple[str, str], tmp_path: Path
) -> None:
    unpacked = tmp_path / "task"  # what Lambda does with the zip: /var/task
    with zipfile.ZipFile(evaluator_package) as bundle:
        names = set(bundle.namelist())
        bundle.extractall(unpacked)
    assert {"app.py", "pipelines/contract.py", "pipelines/__init__.py"} <= names
    assert any(name.startswith("sagemaker_mlflow/") for name in names)
    result = subprocess.run(
        [runtime[0], "-I", "-S", "-c", RESOLVE, str(unpacked), TRACKING_ARN],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    assert resolved["python"] == runtime[1]
    assert resolved["handler"] is True
    assert resolved["store"] == "sagemaker_mlflow.mlflow_sagemaker_store"
    assert resolved["registry"] == "sagemaker_mlflow.mlflow_sagemaker_registry_store"
    assert resolved["host"].startswith("https://") and "eu-west-1" in resolved["host"]
    assert resolved["auth"] == "arn"  # requests are SigV4-signed by the plugin's auth provider


def test_without_the_plugin_the_arn_does_not_resolve(
    evaluator_package: Path, runtime: tuple[str, str], tmp_path: Path
) -> None:
    """The counter-check: the same package minus sagemaker_mlflow cannot open the ARN."""
    unpacked = tmp_path / "task"
    with zipfile.ZipFile(evaluator_package) as bundle:
        bundle.extractall(unpacked)
    for path in unpacked.glob("sagemaker_mlflow*"):
        shutil.rmtree(path)
    result = subprocess.run(
        [runtime[0], "-I", "-S", "-c", RESOLVE, str(unpacked), TRACKING_ARN],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "arn" in result.stderr


def test_every_gate_function_runs_the_runtime_the_package_is_built_for() -> None:
    template = templates.load("gate.yaml")
    runtimes = {
        name: resource["Properties"]["Runtime"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert runtimes and set(runtimes.values()) == {LAMBDA_RUNTIME}, runtimes


def test_the_package_key_changes_with_what_goes_into_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import lambda_package

    before = package_digest("evaluator")
    files = lambda_package.package_files("evaluator")
    changed = tmp_path / "requirements.txt"
    changed.write_text(files["requirements.txt"].read_text() + "six==1.16.0\n")
    monkeypatch.setattr(lambda_package, "package_files", lambda kind: {**files, "requirements.txt": changed})
    assert package_digest("evaluator") != before
