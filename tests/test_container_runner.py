"""The subprocess runner honours the container contract written in the SDK's compose file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.local.container import Volumes


def test_paths_resolve_through_mounts_and_parents_stay_inside_the_container_root(tmp_path):
    volumes = Volumes(["/h/out/train:/opt/ml/processing/output/train", "/h/input:/opt/ml/input"], tmp_path / "root")
    assert volumes.rewrite("/opt/ml/processing/output/train/x.csv") == "/h/out/train/x.csv"
    assert volumes.rewrite("/opt/ml/input/data/train") == "/h/input/data/train"
    assert volumes.rewrite("/opt/ml/processing/output") == str(tmp_path / "root/opt/ml/processing/output")
    assert volumes.rewrite("/opt/mlx") == "/opt/mlx"
    assert volumes.rewrite("label") == "label"


def _training_layout(tmp_path: Path) -> tuple[Path, dict]:
    """What the SDK lays out for a training job, with a file:// source dir."""
    host = tmp_path / "algo-1"
    config = host / "input" / "config"
    config.mkdir(parents=True)
    code = tmp_path / "code"
    code.mkdir()
    (code / "entry.py").write_text(
        "import json, os, sys\n"
        "out = os.environ['SM_MODEL_DIR']\n"
        "json.dump({'argv': sys.argv[1:], 'channels': json.loads(os.environ['SM_CHANNELS']),\n"
        "           'train': os.listdir(os.environ['SM_CHANNEL_TRAIN']), 'hps': json.loads(os.environ['SM_HPS'])},\n"
        "          open(os.path.join(out, 'seen.json'), 'w'))\n"
    )
    hyperparameters = {
        "sagemaker_program": json.dumps("entry.py"),
        "sagemaker_submit_directory": json.dumps(f"file://{code}"),
        "max_depth": json.dumps(5),
        "criterion": json.dumps("gini"),
    }
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {}}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    train = tmp_path / "train-data"
    train.mkdir()
    (train / "train.csv").write_text("a\n1\n")
    compose = {
        "services": {
            "algo-1": {
                "command": "train",
                "environment": ["TRAINING_JOB_NAME=TrainModel-1"],
                "volumes": [
                    f"{tmp_path / 'model'}:/opt/ml/model",
                    f"{host / 'input'}:/opt/ml/input",
                    f"{host / 'output'}:/opt/ml/output",
                    f"{train}:/opt/ml/input/data/train",
                ],
            }
        }
    }
    return tmp_path / "docker-compose.yaml", compose


def test_training_job_gets_hyperparameters_as_arguments_and_sm_variables(tmp_path):
    compose_file, compose = _training_layout(tmp_path)
    compose_file.write_text(yaml.safe_dump(compose))
    subprocess.run([sys.executable, "-m", "pipelines.local.container", str(compose_file)], check=True)
    seen = json.loads((tmp_path / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--max_depth", "5", "--criterion", "gini"]
    assert seen["channels"] == ["train"] and seen["train"] == ["train.csv"]
    assert seen["hps"] == {"max_depth": 5, "criterion": "gini"}


def test_failing_job_reason_is_reported_and_exit_code_kept(tmp_path):
    compose_file, compose = _training_layout(tmp_path)
    (tmp_path / "code" / "entry.py").write_text(
        "import os, sys\nopen(os.path.join(os.environ['SM_OUTPUT_DIR'], 'failure'), 'w').write('bad value x')\n"
        "sys.exit(3)\n"
    )
    compose_file.write_text(yaml.safe_dump(compose))
    log = tmp_path / "failures.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.local.container", str(compose_file)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "SAGEGATE_FAILURE_LOG": str(log)},
    )
    assert result.returncode == 3
    assert "FAILED TrainModel-1: bad value x" in result.stdout
    assert json.loads(log.read_text()) == {"job": "TrainModel-1", "reason": "bad value x"}
