"""What SageMaker does for a training job's CheckpointConfig, for a local job.

The job's `/opt/ml/checkpoints` starts with the files under the checkpoint S3 prefix, and every file
the job writes there is uploaded while it runs (every `interval` seconds) and once more when it
ends, however it ends. The prefix is in the local S3 (the runner inherits its AWS_ENDPOINT_URL), so
the checkpoints are objects of the local bucket, written through to the state folder. Files whose
name starts with "." are a job's half-written files and are never uploaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

CHECKPOINTS_VARIABLE = "SAGEGATE_CHECKPOINT_S3_URI"  # set by the local run for training.checkpoints


class CheckpointSync:
    def __init__(self, uri: str, folder: Path, interval: float = 2.0) -> None:
        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/") + "/"
        self.folder = folder
        self.interval = interval
        import boto3  # here: every job's runner imports this module, few sync checkpoints (~0.12 s each)

        self._s3 = boto3.client("s3")
        self._uploaded: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    def download(self) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                target = self.folder / item["Key"].removeprefix(self.prefix)
                if not target.resolve().is_relative_to(self.folder.resolve()):
                    continue  # a key with `..`: never outside the folder
                target.parent.mkdir(parents=True, exist_ok=True)
                self._s3.download_file(self.bucket, item["Key"], str(target))
                self._uploaded[target] = self._version(target)
                count += 1
        return count

    @staticmethod
    def _version(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size

    def upload(self) -> int:
        """Files new or changed since the last upload; returns how many."""
        count = 0
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            try:
                version = self._version(path)
            except FileNotFoundError:  # replaced while listing: the next pass takes it
                continue
            if self._uploaded.get(path) != version:
                key = self.prefix + path.relative_to(self.folder).as_posix()
                self._s3.upload_file(str(path), self.bucket, key)
                self._uploaded[path] = version
                count += 1
        return count

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.upload()

    def __enter__(self) -> CheckpointSync:
        self.download()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.upload()
