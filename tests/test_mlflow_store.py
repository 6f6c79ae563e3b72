"""The state folder's MLflow store: a copy of one migrated template per MLflow version, never half made."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import mlflow
import pytest

from pipelines.registry import PreparedStore, ensure_experiment, prepare_store, store_template
from pipelines.state import StateHome


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def experiments(home: StateHome) -> dict[str, str]:
    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    return {e.name: e.artifact_location for e in client.search_experiments()}


def test_the_first_store_makes_the_template_and_the_next_are_copies_of_it(cache: Path, tmp_path: Path) -> None:
    first = StateHome(tmp_path / "first").ensure()
    store = PreparedStore(first)
    assert store.process is not None  # no template yet: MLflow migrates one, in a process of its own
    assert store.problem() is None
    template = store_template()
    assert template.parent == cache / "sagegate" and template.is_file()
    assert not list(template.parent.glob("*.partial")) and not list(first.mlflow_db.parent.glob("*.partial"))

    second = StateHome(tmp_path / "second").ensure()
    copied = PreparedStore(second)
    assert copied.process is None and copied.problem() is None  # a copy, made at once
    for home in (first, second):
        # MLflow opens it without migrating (its schema is the current one), and it works
        ensure_experiment(home, "model")
        assert experiments(home) == {
            "Default": (home.mlflow_artifacts / "0").as_uri(),  # each copy's own, not the template's folder
            "model": (home.mlflow_artifacts / "model").as_uri(),
        }


def test_a_store_is_never_replaced_and_racing_commands_make_one(cache: Path, tmp_path: Path) -> None:
    prepare_store(StateHome(tmp_path / "template").ensure())  # the template, so the racers only copy
    home = StateHome(tmp_path / "state").ensure()
    errors: list[BaseException] = []

    def prepare() -> None:
        try:
            prepare_store(home)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    racers = [threading.Thread(target=prepare) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert errors == []
    ensure_experiment(home, "kept")
    prepare_store(home)  # an existing store is left as it is
    assert "kept" in experiments(home)


def test_without_a_writable_cache_the_store_is_migrated_in_place(tmp_path: Path, monkeypatch) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    home = StateHome(tmp_path / "state").ensure()
    prepare_store(home)
    with sqlite3.connect(home.mlflow_db) as connection:
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    ensure_experiment(home, "model")
    assert "model" in experiments(home)


def test_a_user_with_no_cache_to_name_gets_a_store_migrated_in_place(tmp_path: Path, monkeypatch) -> None:
    """No XDG_CACHE_HOME, no HOME and no passwd entry (a bare container user): `Path.home()` raises."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert store_template() is None
    home = StateHome(tmp_path / "state").ensure()
    prepare_store(home)  # in this process, where there is no home (a `PreparedStore` migrates in a child)
    with sqlite3.connect(home.mlflow_db) as connection:
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    ensure_experiment(home, "model")
    assert "model" in experiments(home)
