"""Model YAML validation: every mistake is reported with the file, the field and the value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config
from tests.conftest import DATA, MODELS, write_config

VALID = """
name: demo
task: classification
data: {source: /data/x.csv, target: label}
model:
  class: sklearn.ensemble.RandomForestClassifier
  hyperparameters: {n_estimators: 10, max_depth: 3}
quality_gate:
  metrics: {accuracy: {min: 0.8}}
"""


def test_bundled_examples_load_and_resolve_data_next_to_models():
    cancer = load_config(MODELS / "breast-cancer.yaml")
    assert cancer.task == "classification"
    assert Path(cancer.data.source) == DATA / "breast_cancer.csv"
    friedman = load_config(MODELS / "friedman1.yaml")
    assert friedman.task == "regression"
    assert friedman.quality_gate.metrics["r2"].min == 0.7


def test_overrides_are_typed_and_reach_nested_fields(tmp_path):
    config = load_config(
        write_config(tmp_path, VALID),
        ["model.hyperparameters.max_depth=8", "quality_gate.metrics.f1.min=0.9", "training.platform=sagemaker"],
    )
    assert config.model.hyperparameters["max_depth"] == 8
    assert config.quality_gate.metrics["f1"].min == 0.9
    assert config.training.platform == "sagemaker"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("name: [unclosed", [], "invalid YAML"),
        ("- a list", [], "expected a mapping"),
        (VALID + "extra_key: 1\n", [], "extra_key: unknown field"),
        (VALID, ["model.class=sklearn.ensemble.NoSuchForest"], "unknown model class 'sklearn.ensemble.NoSuchForest'"),
        (VALID, ["model.class=os.system"], "model.class"),
        (VALID, ["model.hyperparameters.max_dept=3"], "model.hyperparameters.max_dept: RandomForestClassifier has no"),
        (VALID, ["model.hyperparameters.n_estimators=-5"], "n_estimators"),
        (VALID, ["model.hyperparameters.n_estimators=many"], "n_estimators"),
        (VALID, ["task=clustering"], "task: Input should be 'classification' or 'regression'"),
        (
            VALID,
            ["task=regression", "quality_gate.metrics={r2: {min: 0.5}}"],
            "is a classifier, task regression needs a regressor",
        ),
        (VALID, ["quality_gate.metrics.r2.min=0.5"], "unknown classification metric 'r2'"),
        (VALID, ["quality_gate.metrics.accuracy={}"], "a threshold needs min, max or both"),
        (VALID, ["data.test_fraction=1.5"], "data.test_fraction"),
        (VALID, ["deployment.min_instances=3", "deployment.max_instances=1"], "min_instances (3) > max_instances (1)"),
        (VALID, ["name=Bad_Name"], "name: String should match pattern"),
        (VALID, ["data.target=null"], "data.target"),
        (VALID, ["nonsense"], "expected FIELD.PATH=VALUE"),
    ],
)
def test_bad_config_is_rejected_with_the_field_and_file(tmp_path, text, overrides, expected):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    assert str(path) in str(error.value) or "--set" in str(error.value)
    assert expected in str(error.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: model config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.channels.train=a.csv", "data.channels.test=b.csv"], "give either data.source"),
        (["data.source=null"], "give either data.source"),
        (["data.source=null", "data.channels.train=a.csv"], "data.channels needs train and test"),
        (["data.source=null", "data.channels.holdout=a.csv"], "data.channels.holdout"),
    ],
)
def test_data_is_one_source_or_named_channels(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(MODELS / "breast-cancer.yaml", overrides)


def test_channel_paths_resolve_like_the_source():
    config = load_config(
        MODELS / "breast-cancer.yaml",
        ["data.source=null", "data.channels.train=data/a.csv", "data.channels.test=s3://b/t.csv"],
    )
    assert config.data.channels == {"train": str(MODELS.parent / "data" / "a.csv"), "test": "s3://b/t.csv"}
    assert set(config.data_inputs()) == {"TrainDataUri", "TestDataUri"}


def test_reading_a_config_imports_no_scikit_learn(tmp_path):
    """`read_config` is the document's own check; `check_estimator` (0.7 s of import) is apart."""
    code = (
        "import sys; from pipelines.config import read_config; "
        f"read_config({str(MODELS / 'breast-cancer.yaml')!r}); print('sklearn' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
