"""`sagegate predict`: the daily batch-inference job, run locally on a registered version.

Runs `containers/batch/batch.py` — the script the AWS inference pipeline runs in its processing
step — as a subprocess on a local folder or file, or on an `s3://` prefix of the local S3 (fetched
to a scratch folder and the results put back, as SageMaker Processing does), so memory stays
flat with file size (the script streams chunks) and nothing here differs from the AWS job.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from pipelines.containers import container_code
from pipelines.local.s3 import LocalS3, split
from pipelines.state import Project, StateHome


class BatchError(RuntimeError):
    """Nothing could be predicted (unknown model or alias, missing input) or the job failed."""


def resolve_model(home: StateHome, project: Project, spec: str) -> tuple[str, str, str]:
    """`NAME`, `NAME@alias` or `NAME@version` → (registered name, version, its model.tar.gz location)."""
    from pipelines.registry import VersionNotFound, find_version

    model, _, selector = spec.partition("@")
    name = project.registered_model(model)
    try:
        chosen = find_version(home, name, selector or "champion")
    except VersionNotFound as error:
        raise BatchError(f"--model {spec}: {error}") from None
    return name, chosen["version"], chosen["model_data_uri"]


def _fetch(s3: LocalS3, source: str, folder: Path) -> Path:
    """An s3:// object or prefix as files in `folder` (keys below the prefix keep their paths)."""
    bucket, prefix = split(source)
    found = 0
    for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :].lstrip("/") or Path(item["Key"]).name
            s3.download(f"s3://{bucket}/{item['Key']}", folder / relative)
            found += 1
    if not found:
        raise BatchError(f"--input {source}: no such object or prefix in the local S3")
    return folder


def predict(
    home: StateHome, project: Project, model_spec: str, source: str, destination: str, *, chunk_rows: int = 10_000
) -> dict[str, object]:
    name, version, archive_uri = resolve_model(home, project, model_spec)
    with tempfile.TemporaryDirectory() as scratch, LocalS3(home, project.region) as s3:
        work = Path(scratch)
        if s3.read(archive_uri) is None:
            raise BatchError(f"model artifact of {name} version {version} is missing: {archive_uri}")
        s3.download(archive_uri, work / "model" / "model.tar.gz")
        if source.startswith("s3://"):
            input_path = _fetch(s3, source, work / "input")
        else:
            input_path = Path(source).resolve()
            if not input_path.exists():
                raise BatchError(f"--input {source}: not found ({input_path})")
        output_path = work / "output" if destination.startswith("s3://") else Path(destination).resolve()
        command = [
            sys.executable, str(container_code("batch", "batch.py")),
            "--model-dir", str(work / "model"), "--input-dir", str(input_path), "--output-dir", str(output_path),
            "--chunk-rows", str(chunk_rows), "--probabilities",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "batch job failed"
            raise BatchError(message.removeprefix("ERROR: "))
        if destination.startswith("s3://"):
            for path in sorted(p for p in output_path.rglob("*") if p.is_file()):
                s3.upload(path, f"{destination.rstrip('/')}/{path.relative_to(output_path).as_posix()}")
    output = destination if destination.startswith("s3://") else str(output_path)
    return {"model": name, "version": version, "output": output, "log": result.stdout.strip()}
