"""Read the MLflow model registry of the local state folder (what `sagegate models` shows)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from pipelines.state import StateHome
from pipelines.statefiles import locked


def ensure_experiment(home: StateHome, name: str) -> None:
    """The experiment `name`, created with its artifacts in the state folder (the server default would
    be ./mlruns)."""
    prepare_store(home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name, artifact_location=home.mlflow_artifact_location(name))
        except MlflowException:  # a concurrent run created it first
            if client.get_experiment_by_name(name) is None:
                raise


def store_template() -> Path | None:
    """An empty store with MLflow's schema, one per MLflow version, in the user's cache (as matplotlib
    keeps its font cache): migrating a new store runs MLflow's ~60 schema migrations, ~1.3 s. None for a
    user with no cache to name (no XDG_CACHE_HOME, no HOME, no passwd entry): stores are migrated in place."""
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sagegate"
    except RuntimeError:  # Path.home(): "Could not determine home directory."
        return None
    return cache / f"mlflow-{installed_version('mlflow')}.db"


def prepare_store(home: StateHome) -> None:
    """The state folder's MLflow store, created as a copy of the template (made first if missing). Two
    commands starting together on a fresh state folder: the first copies, under the store's lock."""
    if home.mlflow_db.is_file():
        return
    source = store_template()
    try:
        if source is not None and not source.is_file():
            _migrated(source)
    except Exception:  # no writable cache (OSError, or sqlite's own error): migrated in place instead
        source = None
    home.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    with locked(home.mlflow_db):
        if home.mlflow_db.is_file():
            return
        if source is None:
            _migrated(home.mlflow_db)
        else:
            _publish(home.mlflow_db, lambda partial: _copy_template(source, partial, home))


def _copy_template(template: Path, database: Path, home: StateHome) -> None:
    """The template's Default experiment keeps its artifacts beside the template: this copy's, in the state
    folder (as `ensure_experiment` places every other experiment's)."""
    shutil.copyfile(template, database)
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (home.mlflow_artifact_location("0"),),
        )


def _migrated(database: Path) -> None:
    """Create `database` with MLflow's current schema; it appears whole or not at all."""

    def migrate(partial: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{partial}", partial.parent.as_uri())  # creating it migrates
        store.engine.dispose()

    database.parent.mkdir(parents=True, exist_ok=True)
    _publish(database, migrate)


def _publish(database: Path, write: Callable[[Path], object]) -> None:
    partial = database.with_name(f".{database.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        write(partial)
        with partial.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, database)
    finally:
        partial.unlink(missing_ok=True)


class PreparedStore:
    """`prepare_store` before the register job needs it. A copy of the template takes milliseconds and is
    made at once; the first run on a machine makes the template (MLflow's import and migrations, ~3 s) in a
    process of its own while the caller builds its run (`problem()` waits), as does a user with no cache,
    whose store is migrated in place there."""

    def __init__(self, home: StateHome) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.error: str | None = None
        template = store_template()
        if home.mlflow_db.is_file() or (template is not None and template.is_file()):
            try:
                prepare_store(home)
            except (OSError, sqlite3.Error) as error:
                self.error = f"{type(error).__name__}: {error}"
            return
        code = "import sys; from pathlib import Path; from pipelines.registry import prepare_store; "
        code += "from pipelines.state import StateHome; prepare_store(StateHome(Path(sys.argv[1])))"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(home.root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def problem(self) -> str | None:
        """Wait until the store is ready: None, or why it could not be prepared."""
        if self.process is None:
            return self.error
        errors = self.process.communicate()[1]
        if self.process.returncode == 0:
            return None
        return errors.strip().splitlines()[-1] if errors.strip() else f"exit code {self.process.returncode}"


def list_versions(home: StateHome) -> tuple[list[dict[str, Any]], list[str]]:
    """Every registered version, and a problem line per version that cannot be read."""
    if not home.mlflow_db.is_file():
        return [], []
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)
    rows, problems = [], []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version_number in (model.aliases or {}).items():
            aliases.setdefault(str(version_number), []).append(alias)
        for version in client.search_model_versions(f"name='{model.name}'"):
            try:
                rows.append(_row(version, aliases))
            except (TypeError, ValueError) as error:
                problems.append(f"{model.name} version {version.version} in {home.mlflow_db}: {error}")
    return sorted(rows, key=lambda r: (r["name"], int(r["version"]))), problems


def _row(version: Any, aliases: dict[str, list[str]]) -> dict[str, Any]:
    tags = version.tags or {}
    return {
        "name": version.name,
        "version": str(version.version),
        "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "execution_id": tags.get("sagemaker.pipeline_execution_id", ""),
        "data_sha256": tags.get("data.sha256", ""),
        "model_data_uri": tags.get("model_data_uri", ""),
        # what endpoints run it with (the register job's verified ONNX conversion, or scikit-learn) and why
        "runtime": tags.get("serving.runtime", "sklearn"),
        "runtime_reason": tags.get("serving.reason", "registered before compiled serving"),
        "run_id": version.run_id,
        "aliases": sorted(aliases.get(str(version.version), [])),
        "approval_status": tags.get("approval_status", "PendingManualApproval"),
        "metrics": {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")},
        "libraries": {k.removeprefix("library."): v for k, v in tags.items() if k.startswith("library.")},
    }


class VersionNotFound(LookupError):
    """No registered version matches; the message says what is registered."""


def find_version(
    home: StateHome, name: str, selector: str | None = None, *, prefer_alias: str | None = None
) -> dict[str, Any]:
    """One registered version of `name`. `selector` is a version number or an alias; without one,
    the version carrying `prefer_alias` if any, else the newest. Asks the registry for that one
    version (no listing): a run's gate costs the same however many versions came before."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=home.mlflow_tracking_uri)

    def by_alias(alias: str) -> Any:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    chosen = None
    if home.mlflow_db.is_file():
        if selector is None:
            chosen = by_alias(prefer_alias) if prefer_alias else None
            if chosen is None:
                newest = client.search_model_versions(f"name='{name}'", max_results=1, order_by=["version_number DESC"])
                chosen = newest[0] if newest else None
                if chosen is None:
                    raise VersionNotFound(f"nothing registered yet for {name}; run `sagegate run` first")
        elif str(selector).isdigit():
            try:
                chosen = client.get_model_version(name, str(selector))
            except MlflowException:
                chosen = None
        else:
            chosen = by_alias(selector)
    if chosen is not None:
        return _row(chosen, {str(chosen.version): list(chosen.aliases or [])})
    versions = [v for v in list_versions(home)[0] if v["name"] == name]
    if not versions:
        raise VersionNotFound(f"nothing registered yet for {name}; run `sagegate run` first")
    known = ", ".join(v["version"] + (f" ({','.join(v['aliases'])})" if v["aliases"] else "") for v in versions)
    raise VersionNotFound(f"{name} has no version or alias {selector!r} (versions: {known})")
