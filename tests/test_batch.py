"""Batch inference: `sagegate predict` (the job script, streamed) and its AWS pipeline definition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from pipelines.batch import BatchError, predict, resolve_model
from pipelines.local.s3 import LocalS3
from pipelines.state import Project, StateHome
from tests.test_serving import DATA, FEATURES, register

PROJECT = Project()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> StateHome:
    home = StateHome(tmp_path_factory.mktemp("batch") / "state").ensure()
    register(home, 10)
    import mlflow

    mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri).set_registered_model_alias(
        "sagegate-development-breast-cancer", "champion", "1"
    )
    return home


def test_predictions_match_the_model_and_keep_input_columns(home: StateHome, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rows = DATA[FEATURES].assign(customer_id=range(len(DATA)))
    rows.iloc[:300].to_csv(inputs / "a.csv", index=False)
    rows.iloc[300:].to_csv(inputs / "b.csv", index=False)
    result = predict(home, PROJECT, "breast-cancer", str(inputs), str(tmp_path / "out"), chunk_rows=64)
    assert result["version"] == "1"
    out = pd.concat([pd.read_csv(tmp_path / "out" / name) for name in ("a.csv", "b.csv")], ignore_index=True)
    assert list(out.columns[: len(FEATURES) + 1]) == [*FEATURES, "customer_id"]
    import tarfile

    with LocalS3(home) as s3:
        archive = s3.download(resolve_model(home, PROJECT, "breast-cancer")[2], tmp_path / "model.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    model = joblib.load(tmp_path / "model" / "model.joblib")
    assert out["prediction"].tolist() == model.predict(DATA[FEATURES]).tolist()
    assert np.allclose(out["probability_0"] + out["probability_1"], 1)


def peak_rss_kb(home: StateHome, source: Path, out: Path) -> int:
    """Peak resident memory of the batch job process (the child `sagegate predict` runs)."""
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from pipelines.batch import predict\n"
        "from pipelines.state import Project, StateHome\n"
        "predict(StateHome(Path(sys.argv[1])), Project(), 'breast-cancer', sys.argv[2], sys.argv[3], chunk_rows=2000)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(home.root), str(source), str(out)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return int(result.stdout.strip().splitlines()[-1])


def test_memory_stays_flat_as_the_file_grows(home: StateHome, tmp_path: Path) -> None:
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    DATA[FEATURES].to_csv(small, index=False)
    pd.concat([DATA[FEATURES]] * 120, ignore_index=True).to_csv(large, index=False)  # ~68k rows, 120x the file
    small_kb = peak_rss_kb(home, small, tmp_path / "o1")
    large_kb = peak_rss_kb(home, large, tmp_path / "o2")
    assert large.stat().st_size > 100 * small.stat().st_size
    assert large_kb < small_kb * 1.3, (small_kb, large_kb)
    assert len(pd.read_csv(tmp_path / "o2" / "large.csv", usecols=["prediction"])) == 120 * len(DATA)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["mean_radius"]), "missing feature column(s) mean_radius"),
        (lambda f: f.astype({"mean_area": object}).assign(mean_area=["x"] + [1.0] * (len(f) - 1)),
         "column 'mean_area' has a non-numeric value at data row 1"),
        (lambda f: f.assign(mean_area=[np.nan] + [1.0] * (len(f) - 1)), "column 'mean_area' is empty at data row 1"),
    ],
)  # fmt: skip
def test_bad_files_fail_naming_the_problem_and_leave_no_partial_output(home, tmp_path, mutate, message) -> None:
    source = tmp_path / "day.csv"
    mutate(DATA[FEATURES].copy()).to_csv(source, index=False)
    with pytest.raises(BatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predict(home, PROJECT, "breast-cancer", str(source), str(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_unknown_alias_or_input_is_refused(home: StateHome, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="no version or alias 'staging'"):
        predict(home, PROJECT, "breast-cancer@staging", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(BatchError, match="not found"):
        predict(home, PROJECT, "breast-cancer@1", str(tmp_path / "nothing.csv"), str(tmp_path / "out"))


def test_inference_pipeline_definition_runs_the_same_script_on_the_champion() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "definition", "models/breast-cancer.yaml",
         "--kind", "inference"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    definition = json.loads(printed)
    parameters = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert parameters["ModelDataUri"] == "s3://sagegate-development-training/models/breast-cancer/champion/model.tar.gz"
    (step,) = definition["Steps"]
    assert step["Name"] == "BatchPredict" and step["Type"] == "Processing"
    entry = step["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry[-1].endswith("batch.py") and step["Arguments"]["AppSpecification"]["ContainerArguments"] == [
        "--probabilities"
    ]
