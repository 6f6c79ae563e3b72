"""Shared fixtures: the repository root, example configs and an isolated state folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DATA = ROOT / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines.state import StateHome

    monkeypatch.setenv("SAGEGATE_HOME", str(tmp_path / "state"))
    return StateHome.from_env()


def write_config(tmp_path: Path, text: str, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path
