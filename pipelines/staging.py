"""Where a model's data goes in the training bucket, and putting it there.

Apart from `pipelines.definition` because staging needs neither the SageMaker SDK nor the
pipeline: `sagegate run` starts uploading while the SDK is still importing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.config import ModelConfig
from pipelines.state import Project


def input_uris(config: ModelConfig, project: Project) -> dict[str, str]:
    """Each data parameter's default: the s3:// source as given, a local file where it is staged."""
    return {
        parameter: source if source.startswith("s3://") else f"s3://{project.bucket}/{key}"
        for parameter, (source, key) in config.data_inputs().items()
    }


def local_files(config: ModelConfig) -> dict[str, tuple[Path, str]]:
    """The data parameters whose source is a local file: name → (the file, the key it is staged under).
    A missing file raises FileNotFoundError naming the YAML field."""
    fields = {f"{c.capitalize()}DataUri": f"data.channels.{c}" for c in ("train", "validation", "test")}
    local = {
        parameter: (Path(source), key)
        for parameter, (source, key) in config.data_inputs().items()
        if not source.startswith("s3://")
    }
    for parameter, (path, _) in local.items():
        if not path.is_file():
            raise FileNotFoundError(f"{fields.get(parameter, 'data.source')}: file not found: {path}")
    return local


def stage_inputs(config: ModelConfig, project: Project, upload: Callable[[Path, str], None]) -> dict[str, str]:
    """Upload every local data file to its key (`upload(path, key)`); the data parameters' values.
    A missing file raises FileNotFoundError naming the YAML field, before anything is uploaded."""
    for path, key in local_files(config).values():
        upload(path, key)
    return input_uris(config, project)
