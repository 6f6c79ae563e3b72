"""A local S3 endpoint whose objects persist as plain files under the state folder.

The SDK uploads code, downloads inputs and uploads outputs with boto3, and job subprocesses
fetch their code the same way, so local mode needs a real S3 endpoint that every process can
reach: moto's server on 127.0.0.1. On start the mirror folder (`s3/{bucket}/{key}`) is loaded
into it; from then on every object S3 stores or deletes is written through to the mirror at
once (`s3_patch`), so a run's artifacts are ordinary files with the keys they would have on
AWS, durable as soon as S3 has acknowledged them, and two runs on one state folder never
overwrite each other's objects with stale copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import boto3
import requests
from moto.server import ThreadedMotoServer

from pipelines.local import s3_patch

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
        self.endpoint_url = ""

    def __enter__(self) -> LocalS3:
        self.mirror.mkdir(parents=True, exist_ok=True)
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
        s3_patch.install(self.mirror)
        try:
            self._load()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        s3_patch.uninstall()
        if self._server:
            self._server.stop()
            self._server = None
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
        (self.mirror / bucket).mkdir(parents=True, exist_ok=True)

    def _load(self) -> None:
        client = self.client
        with s3_patch.loading():
            for bucket_dir in sorted(p for p in self.mirror.iterdir() if p.is_dir() and not p.name.startswith(".")):
                client.create_bucket(Bucket=bucket_dir.name)
                for path in sorted(p for p in bucket_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
                    client.upload_file(str(path), bucket_dir.name, path.relative_to(bucket_dir).as_posix())
