"""A local S3 endpoint whose objects persist as plain files under the state folder.

The SDK uploads code, downloads inputs and uploads outputs with boto3, and job subprocesses
fetch their code the same way, so local mode needs a real S3 endpoint that every process can
reach: moto's server on 127.0.0.1. moto keeps objects in memory, so on start the mirror
folder (`s3/{bucket}/{key}`) is loaded into it and on stop what changed is written back
(by ETag): a run's artifacts are ordinary files, with the same keys they would have on AWS.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import boto3
import requests
from moto.server import ThreadedMotoServer

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sagegate-local",
    "AWS_SECRET_ACCESS_KEY": "sagegate-local",
    "AWS_SESSION_TOKEN": "sagegate-local",
}


class LocalS3:
    def __init__(self, mirror: Path, region: str = "us-east-1") -> None:
        self.mirror = mirror
        self.region = region
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}
        self._loaded: dict[str, dict[str, str]] = {}
        self.endpoint_url = ""

    def __enter__(self) -> LocalS3:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10)
        env = {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "MOTO_PORT": str(port),  # where moto's Step Functions interpreter sends its service calls
        }
        self._saved_env = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        self._load()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.save()
        finally:
            if self._server:
                self._server.stop()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @property
    def client(self):  # noqa: ANN201 - boto3 client types are generated
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)

    def ensure_bucket(self, bucket: str) -> None:
        client = self.client
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)

    def _load(self) -> None:
        self.mirror.mkdir(parents=True, exist_ok=True)
        client = self.client
        for bucket_dir in sorted(p for p in self.mirror.iterdir() if p.is_dir() and not p.name.startswith(".")):
            client.create_bucket(Bucket=bucket_dir.name)
            for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file()):
                client.upload_file(str(path), bucket_dir.name, path.relative_to(bucket_dir).as_posix())
        self._loaded = self._listing()

    def _listing(self) -> dict[str, dict[str, str]]:
        """Every object's ETag, per bucket."""
        client = self.client
        listing: dict[str, dict[str, str]] = {}
        for bucket in client.list_buckets()["Buckets"]:
            objects = listing[bucket["Name"]] = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
                objects.update({item["Key"]: item["ETag"] for item in page.get("Contents", [])})
        return listing

    def save(self) -> None:
        """Write back what changed since the load: new or rewritten objects are downloaded, deleted
        keys disappear from the mirror; untouched objects are not copied again."""
        client = self.client
        for bucket, objects in self._listing().items():
            loaded = self._loaded.get(bucket, {})
            for key, etag in objects.items():
                target = self.mirror / bucket / key
                if loaded.get(key) == etag and target.is_file():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.partial")
                client.download_file(bucket, key, str(partial))
                os.replace(partial, target)
            for key in loaded.keys() - objects.keys():
                (self.mirror / bucket / key).unlink(missing_ok=True)
        self._loaded = self._listing()
