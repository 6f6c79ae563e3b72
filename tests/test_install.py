"""A non-editable install works from any working directory.

The project is built into a wheel from a copy of its files and installed with `pip install`
into a fresh virtualenv; every command then runs from an empty folder, on a user's project
folder (its own `models/` and `data/`) elsewhere. Container code, Lambdas, templates and the
example models must come from the wheel's package data: the checkout is not on any path.
The virtualenv borrows the test environment's third-party packages through a `.pth` line
(reinstalling them all would take minutes) but not its editable sagegate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tests.gate_fixtures import ROOT

ENDPOINT = "sagegate-development-breast-cancer-serverless"


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    )  # fmt: skip
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in project_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(root / "dist"), str(source)],
        check=True,
    )  # fmt: skip
    wheel = next((root / "dist").glob("sagegate-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True,
    )  # fmt: skip
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    user_project = root / "my-project"
    (user_project / "models").mkdir(parents=True)
    (user_project / "data").mkdir()
    shutil.copy2(ROOT / "models" / "breast-cancer.yaml", user_project / "models")
    shutil.copy2(ROOT / "data" / "breast_cancer.csv", user_project / "data")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "bin": venv / "bin", "site": site, "project": user_project, "cwd": elsewhere,
            "home": root / "state"}  # fmt: skip


def command(installed: dict[str, Path], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "SAGEGATE_HOME": str(installed["home"]),
        "PATH": f"{installed['bin']}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        [str(installed["bin"] / args[0]), *args[1:]],
        cwd=installed["cwd"], env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_wheel_carries_the_code_that_runs_outside_the_package(installed) -> None:
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for expected in (
        "pipelines/assets/containers/preprocess/preprocess.py",
        "pipelines/assets/containers/inference/serve.py",
        "pipelines/assets/lambdas/evaluator/app.py",
        "pipelines/assets/cloudformation/training-bucket.yaml",
        "pipelines/assets/models/breast-cancer.yaml",
        "pipelines/console/templates/run.html",
        "pipelines/console/static/console.js",
    ):
        assert expected in names, expected
    assert not any("__pycache__" in name or name.startswith("tests/") for name in names)
    located = command(installed, "python", "-c", "import pipelines; print(pipelines.__file__)").stdout
    assert Path(located.strip()).is_relative_to(installed["site"])  # not the checkout


def test_every_command_runs_from_any_working_directory(installed) -> None:
    config = str(installed["project"] / "models" / "breast-cancer.yaml")
    assert json.loads(command(installed, "sagegate", "gate", "definition").stdout)["StartAt"]
    definition = json.loads(command(installed, "get-pipeline-definition", config).stdout)
    assert definition["Steps"][0]["Name"] == "PreprocessData"
    run = command(installed, "sagegate", "run", config, "--json")
    record = json.loads(run.stdout)
    assert record["status"] == "Succeeded" and record["deployment"]["status"] == "SUCCEEDED", run.stderr
    assert record["registered_version"] in command(installed, "sagegate", "models").stdout
    assert record["run_id"] in command(installed, "sagegate", "runs").stdout
    assert record["deployment"]["name"] in command(installed, "sagegate", "executions").stdout
    assert ENDPOINT in command(installed, "sagegate", "endpoints").stdout

    rows = installed["cwd"] / "rows.csv"
    data = pd.read_csv(installed["project"] / "data" / "breast_cancer.csv")
    data.drop(columns="label").head(3).to_csv(rows, header=False, index=False)
    predictions = json.loads(command(installed, "sagegate", "invoke", ENDPOINT, "--file", str(rows)).stdout)
    assert len(predictions["predictions"]) == 3
    data.drop(columns="label").head(3).to_csv(rows, index=False)
    command(installed, "sagegate", "predict", "--model", "breast-cancer", "--input", str(rows), "--output", "out")
    assert len(pd.read_csv(next((installed["cwd"] / "out").glob("*.csv")))) == 3

    # the bundled example models are found without a ./models folder; templates come from the wheel
    provisioned = command(installed, "sagegate", "provision", "endpoint", "--model", "breast-cancer",
                          "--deployment-type", "realtime", "--json")  # fmt: skip
    assert json.loads(provisioned.stdout)["EndpointStatus"] == "InService"
    rendered = installed["cwd"] / "endpoint.json"
    command(installed, "sagegate", "provision", "endpoint", "--model", "breast-cancer", "--target", "aws",
            "--model-package-arn", "arn:aws:sagemaker:us-east-1:123456789012:model-package/x/1",
            "--dry-run", "--render", str(rendered))  # fmt: skip
    assert json.loads(rendered.read_text())["Resources"]
    assert command(installed, "sagegate", "gateway", "stop").stdout.strip() == "stopped"
    assert sorted(path.name for path in installed["cwd"].iterdir()) == ["endpoint.json", "out", "rows.csv"]
