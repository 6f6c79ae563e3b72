"""One environment everywhere: the runtime image installs exactly the packages the local
environment trains and serves with (containers/requirements.lock), and every job and the model
server run on that image."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from pipelines.containers import IMAGE_FILES, context_digest, locked_versions
from tests.conftest import ROOT

CONTAINERS = ROOT / "containers"


def lock_script():
    spec = importlib.util.spec_from_file_location("lock_containers", ROOT / "scripts" / "lock_containers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_is_the_local_environment() -> None:
    """Fails when constraints.txt (what is installed here) moves and the lock was not regenerated."""
    script = lock_script()
    expected = script.render(script.closure(script.top_level(CONTAINERS / "requirements.in")))
    assert (CONTAINERS / "requirements.lock").read_text() == expected, "run python scripts/lock_containers.py"
    for name, pinned in locked_versions().items():
        assert version(name) == pinned, name


def test_constraints_and_the_lock_agree_on_every_shared_package() -> None:
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, pinned = line.split("==", 1)
            constraints[re.sub(r"[-_.]+", "-", name).lower()] = pinned.strip()
    shared = constraints.keys() & locked_versions().keys()
    assert {"scikit-learn", "numpy", "pandas", "mlflow", "gunicorn"} <= shared
    assert {name: constraints[name] for name in shared} == {name: locked_versions()[name] for name in shared}


def test_the_image_installs_exactly_the_lock_on_the_local_python() -> None:
    dockerfile = (CONTAINERS / "Dockerfile").read_text()
    base = re.search(r"^FROM \S+python:(\d+\.\d+)", dockerfile, re.M)
    assert base and base.group(1) == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "COPY requirements.lock /opt/sagegate/requirements.lock" in dockerfile
    assert "pip install --no-deps -r /opt/sagegate/requirements.lock" in dockerfile
    # the one image-only package (the toolkit behind `train`) cannot move a locked package
    extra = re.findall(r"pip install (?!--no-deps)(.*)", dockerfile)
    assert extra == ["-c /opt/sagegate/requirements.lock sagemaker-training==5.1.4 \\"]
    entrypoint = (CONTAINERS / "entrypoint.sh").read_text()
    assert "train) shift; exec train" in entrypoint and "serve) shift; exec python /opt/program/serve.py" in entrypoint
    for name in IMAGE_FILES:
        assert (CONTAINERS / name).is_file(), name


def test_the_image_tag_changes_with_its_content_and_only_with_it(tmp_path: Path) -> None:
    copy = tmp_path / "containers"
    shutil.copytree(CONTAINERS, copy)
    before = context_digest(copy)
    (copy / "train" / "train.py").write_text("# job code is uploaded per run, not baked in\n")
    assert context_digest(copy) == before
    with (copy / "requirements.lock").open("a") as lock:
        lock.write("extra-package==1.0\n")
    assert context_digest(copy) != before


@pytest.mark.parametrize("kind", ["training", "inference", "monitoring"])
def test_every_job_and_the_registered_model_run_on_the_runtime_image(kind: str) -> None:
    import json

    from pipelines.config import load_config
    from pipelines.containers import image_tag
    from pipelines.definition import definition_json
    from pipelines.state import Project
    from tests.conftest import MODELS

    project = Project()
    config = load_config(MODELS / ("friedman1.yaml" if kind == "monitoring" else "breast-cancer.yaml"))
    definition = json.loads(definition_json(config, project, kind=kind))
    images = []

    def collect(steps: list[dict]) -> None:
        for step in steps:
            arguments = step.get("Arguments", {})
            images.extend(
                [
                    (arguments.get("AppSpecification") or {}).get("ImageUri"),
                    (arguments.get("AlgorithmSpecification") or {}).get("TrainingImage"),
                    *[c.get("Image") for c in (arguments.get("InferenceSpecification") or {}).get("Containers", [])],
                ]
            )
            collect(arguments.get("IfSteps", []) + arguments.get("ElseSteps", []))

    collect(definition["Steps"])
    used = {image for image in images if image}
    assert used == {project.image_uri(image_tag())}
    assert "sagemaker-scikit-learn" not in json.dumps(definition)  # no stock framework image anywhere
    assert not any(step["Type"] == "Training" and "Repack" in step["Name"] for step in definition["Steps"])
