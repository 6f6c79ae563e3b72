"""The local S3 mirror: every object S3 acknowledges is on disk at once, deletes too."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pipelines.local.s3 import LocalS3


def test_objects_are_written_through_while_the_server_runs(tmp_path: Path) -> None:
    mirror = tmp_path / "s3"
    (mirror / "bucket" / "keep").mkdir(parents=True)
    kept, gone = mirror / "bucket/keep/a.txt", mirror / "bucket/gone.txt"
    kept.write_text("a")
    gone.write_text("b")
    with LocalS3(mirror) as s3:
        client = s3.client
        before = kept.stat().st_mtime_ns
        client.put_object(Bucket="bucket", Key="new/deep/n.txt", Body=b"n")
        assert (mirror / "bucket/new/deep/n.txt").read_text() == "n"  # before the server stops
        client.delete_object(Bucket="bucket", Key="gone.txt")
        assert not gone.exists()
        client.copy_object(Bucket="bucket", Key="copy.txt", CopySource={"Bucket": "bucket", "Key": "keep/a.txt"})
        assert (mirror / "bucket/copy.txt").read_text() == "a"
        big = b"x" * (9 * 1024 * 1024)  # over boto3's multipart threshold
        (tmp_path / "big.bin").write_bytes(big)
        client.upload_file(str(tmp_path / "big.bin"), "bucket", "big.bin")
        assert (mirror / "bucket/big.bin").read_bytes() == big
        client.create_bucket(Bucket="other")
        client.put_object(Bucket="other", Key="x", Body=b"x")
        assert (mirror / "other/x").read_text() == "x"
        assert kept.stat().st_mtime_ns == before
    assert not list(mirror.rglob(".*.partial"))
    with LocalS3(mirror) as s3:  # and it all loads back
        keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket="bucket")["Contents"]}
    assert keys == {"keep/a.txt", "new/deep/n.txt", "copy.txt", "big.bin"}


def test_a_key_that_escapes_the_bucket_folder_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "s3"
    with LocalS3(mirror) as s3:
        s3.ensure_bucket("bucket")
        with pytest.raises(ClientError):
            s3.client.put_object(Bucket="bucket", Key="../../outside.txt", Body=b"x")
    assert not (tmp_path / "outside.txt").exists() and not (mirror / "outside.txt").exists()
