"""training.checkpoints locally: a training job writes checkpoints, they reach the local bucket, and a
job killed mid-way continues from the last one on the next run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from pipelines.containers import container_code
from pipelines.local.s3 import LocalS3
from pipelines.registry import list_versions
from pipelines.state import Project, StateHome
from tests.conftest import MODELS
from tests.processes import processes

ROOT = Path(__file__).resolve().parent.parent
STAGES = 3000  # about 6 s of gradient boosting here: long enough to be killed part-way
OVERRIDES = ["--set", "training.checkpoints=true", "--set", f"model.hyperparameters.n_estimators={STAGES}"]


def train_module():
    spec = importlib.util.spec_from_file_location("train_job", container_code("train", "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_resumed_forest_is_the_forest_an_uninterrupted_fit_grows(tmp_path: Path) -> None:
    """warm_start continues with the same per-tree seeds, so checkpoint + resume changes nothing."""
    train = train_module()
    data = pd.read_csv(ROOT / "data" / "friedman1.csv")
    features, target = data.drop(columns="y"), data["y"]
    csv = tmp_path / "train.csv"
    data.to_csv(csv, index=False)
    args = argparse.Namespace(model_class="sklearn.ensemble.RandomForestRegressor")

    def fit(folder: Path, trees: int):
        hyperparameters = {"n_estimators": trees, "random_state": 7, "max_depth": 4}
        model = train.build_estimator(args.model_class, hyperparameters)
        folder.mkdir(exist_ok=True)
        scaled = train.scale_in_place(model, features.to_numpy(dtype="float64", copy=True), list(features.columns))
        return train.fit_in_stages(model, scaled, target, folder, train.fingerprint(args, hyperparameters, csv))

    whole = fit(tmp_path / "whole", 50)
    fit(tmp_path / "resumed", 20)  # a job that got to 20 trees
    resumed = fit(tmp_path / "resumed", 50)  # the next attempt, same data and settings
    assert len(resumed.named_steps["model"].estimators_) == 50
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["n_estimators"] == 50
    np.testing.assert_array_equal(whole.predict(features), resumed.predict(features))
    other = tmp_path / "other.csv"  # other data: the checkpoint is not used
    data.head(500).to_csv(other, index=False)
    assert train.fingerprint(args, {"n_estimators": 50}, other) != train.fingerprint(args, {"n_estimators": 50}, csv)


def training_processes(home: StateHome) -> list[int]:
    """The running train.py of a run on this state folder (its working directory is under it)."""
    return [
        pid
        for pid, argv, cwd in processes()
        if any(part.endswith("train.py") for part in argv) and cwd.startswith(str(home.root))
    ]


def test_a_killed_training_job_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state")
    env = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    sagegate = [str(Path(sys.executable).parent / "sagegate"), "run", str(MODELS / "friedman1.yaml"), *OVERRIDES]
    checkpoint_uri = f"s3://{Project().bucket}/checkpoints/friedman1/local/checkpoint.json"

    def checkpoint() -> dict | None:
        with LocalS3(home) as s3:
            body = s3.read(checkpoint_uri)
        return json.loads(body) if body else None

    first = subprocess.Popen(sagegate, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (training_processes(home) and checkpoint()):  # a checkpoint synced, the job still running
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"no checkpoint reached the local bucket while the job ran:\n{first.communicate()[0][-3000:]}")
        time.sleep(0.05)
    for pid in training_processes(home):
        os.kill(pid, signal.SIGKILL)  # the job dies mid-way, as on a spot interruption
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 1, output
    reached = checkpoint()["n_estimators"]
    assert 0 < reached < STAGES, reached

    second = subprocess.run(sagegate, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    logs = "\n".join(path.read_text() for path in (home.runs / "logs").rglob("*.log"))
    resumed_at = [
        int(line.split(" at ")[1].split("/")[0]) for line in logs.splitlines() if "resumed from checkpoint" in line
    ]
    assert resumed_at and resumed_at[0] >= reached, logs[-3000:]
    assert checkpoint()["n_estimators"] == STAGES
    versions = [v for v in list_versions(home)[0] if v["name"] == Project().registered_model("friedman1")]
    assert len(versions) == 1  # the killed run registered nothing
    with LocalS3(home) as s3:
        artifact = s3.download(versions[0]["model_data_uri"], tmp_path / "model.tar.gz")
    with tarfile.open(artifact) as archive:
        archive.extract("model.joblib", tmp_path, filter="data")
    assert joblib.load(tmp_path / "model.joblib").named_steps["model"].n_estimators_ == STAGES
