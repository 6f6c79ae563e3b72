"""The local S3 mirror: what a session changes is written back, and only that."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.local.s3 import LocalS3


def test_save_writes_back_changes_only(tmp_path: Path) -> None:
    mirror = tmp_path / "s3"
    (mirror / "bucket" / "keep").mkdir(parents=True)
    kept, gone, rewritten = mirror / "bucket/keep/a.txt", mirror / "bucket/gone.txt", mirror / "bucket/rewritten.txt"
    for path, text in ((kept, "a"), (gone, "b"), (rewritten, "c")):
        path.write_text(text)
    os.utime(kept, ns=(1, 1))
    with LocalS3(mirror) as s3:
        client = s3.client
        client.delete_object(Bucket="bucket", Key="gone.txt")
        client.put_object(Bucket="bucket", Key="rewritten.txt", Body=b"C")
        client.put_object(Bucket="bucket", Key="new/deep/n.txt", Body=b"n")
        client.create_bucket(Bucket="other")
        client.put_object(Bucket="other", Key="x", Body=b"x")
    assert kept.read_text() == "a" and kept.stat().st_mtime_ns == 1  # untouched: not copied again
    assert not gone.exists()
    assert rewritten.read_text() == "C"
    assert (mirror / "bucket/new/deep/n.txt").read_text() == "n"
    assert (mirror / "other/x").read_text() == "x"
    assert not list(mirror.rglob(".*.partial"))
    with LocalS3(mirror) as s3:  # and it all loads back
        keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket="bucket")["Contents"]}
    assert keys == {"keep/a.txt", "rewritten.txt", "new/deep/n.txt"}
