"""Where a model's data goes in the training bucket, and putting it there.

Apart from `pipelines.definition` because staging needs neither the SageMaker SDK nor the
pipeline: `sagegate run` starts uploading while the SDK is still importing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pipelines.config import ModelConfig
from pipelines.s3_errors import is_missing
from pipelines.state import Project

SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the bytes a staged object was uploaded from


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


def upload_unless_stored(client: Any, path: Path, bucket: str, key: str) -> bool:
    """Upload `path` to `key` unless the object there was uploaded from the same bytes (the `sha256`
    metadata this writes with it): a run on unchanged data stores nothing again (locally, 40 MB cost
    SeaweedFS ~0.5 s of CPU and the store another copy until it vacuums). True if it uploaded."""
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    try:
        stored = client.head_object(Bucket=bucket, Key=key)["Metadata"].get(SHA256_METADATA)
    except ClientError as error:
        if not is_missing(error):
            raise
        stored = None
    if stored == digest:
        return False
    client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: digest}})
    return True


def stage_inputs(config: ModelConfig, project: Project, client: Any) -> dict[str, str]:
    """Upload every local data file to its key in the training bucket with the S3 `client`, unless it is
    there already; the data parameters' values. A missing file raises FileNotFoundError naming the YAML
    field, before anything is uploaded."""
    for path, key in local_files(config).values():
        upload_unless_stored(client, path, project.bucket, key)
    return input_uris(config, project)
