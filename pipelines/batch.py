"""`sagegate predict`: the daily batch-inference job, run locally on a registered version.

Runs `containers/batch/batch.py` — the script the AWS inference pipeline runs in its processing
step — as a subprocess on files from the local S3 mirror or a local folder, so memory stays
flat with file size (the script streams chunks) and nothing here differs from the AWS job.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.containers import container_code
from pipelines.state import Project, StateHome


class BatchError(RuntimeError):
    """Nothing could be predicted (unknown model or alias, missing input) or the job failed."""


def resolve_model(home: StateHome, project: Project, spec: str) -> tuple[str, str, Path]:
    """`NAME`, `NAME@alias` or `NAME@version` → (registered name, version, model.tar.gz path)."""
    from pipelines.registry import VersionNotFound, find_version

    model, _, selector = spec.partition("@")
    name = project.registered_model(model)
    try:
        chosen = find_version(home, name, selector or "champion")
    except VersionNotFound as error:
        raise BatchError(f"--model {spec}: {error}") from None
    return name, chosen["version"], home.local_path(chosen["model_data_uri"])


def predict(
    home: StateHome, project: Project, model_spec: str, source: str, destination: str, *, chunk_rows: int = 10_000
) -> dict[str, object]:
    name, version, archive = resolve_model(home, project, model_spec)
    if not archive.is_file():
        raise BatchError(f"model artifact of {name} version {version} is missing: {archive}")
    input_path, output_path = home.local_path(source), home.local_path(destination)
    if not input_path.exists():
        raise BatchError(f"--input {source}: not found ({input_path})")
    with tempfile.TemporaryDirectory() as model_dir:
        (Path(model_dir) / "model.tar.gz").symlink_to(archive)
        command = [
            sys.executable, str(container_code("batch", "batch.py")),
            "--model-dir", model_dir, "--input-dir", str(input_path), "--output-dir", str(output_path),
            "--chunk-rows", str(chunk_rows), "--probabilities",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "batch job failed"
        raise BatchError(message.removeprefix("ERROR: "))
    return {"model": name, "version": version, "output": str(output_path), "log": result.stdout.strip()}
