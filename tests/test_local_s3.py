"""The local S3: one disk-backed SeaweedFS server per state folder, shared by concurrent commands,
stopped after the last, persistent across restarts, and migrated from the old plain-file mirror."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pipelines.config import load_config
from pipelines.local.s3 import LocalS3, split, staged_in_background, started_early
from pipelines.local.s3_server import S3Server
from pipelines.sessions import local_session
from pipelines.staging import stage_inputs, upload_unless_stored
from pipelines.state import Project, StateHome
from pipelines.statefiles import process_alive, read_json
from tests.conftest import MODELS, wait_for

SAGEGATE = str(Path(sys.executable).parent / "sagegate")


def server_process(home: StateHome) -> str | None:
    """The live server's process token, or None."""
    record = S3Server(home.s3_store).running()
    return record["process"] if record else None


def test_objects_persist_across_restarts_and_the_server_stops_after_its_last_user(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    big = os.urandom(9 * 1024 * 1024)  # over boto3's multipart threshold
    (tmp_path / "big.bin").write_bytes(big)
    with LocalS3(home) as s3:
        token = server_process(home)
        assert token and process_alive(token)
        s3.ensure_bucket("bucket")
        client = s3.client
        client.put_object(Bucket="bucket", Key="keep/a.txt", Body=b"a")
        client.put_object(Bucket="bucket", Key="gone.txt", Body=b"b")
        client.delete_object(Bucket="bucket", Key="gone.txt")
        client.copy_object(Bucket="bucket", Key="copy.txt", CopySource={"Bucket": "bucket", "Key": "keep/a.txt"})
        client.upload_file(str(tmp_path / "big.bin"), "bucket", "deep/big.bin")
    assert not process_alive(token) and server_process(home) is None
    with LocalS3(home) as s3:  # a new server on the same store
        assert server_process(home) != token
        keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket="bucket")["Contents"]}
        assert keys == {"keep/a.txt", "copy.txt", "deep/big.bin"}
        assert s3.read("s3://bucket/deep/big.bin") == big
        assert s3.read("s3://bucket/copy.txt") == b"a" and s3.read("s3://bucket/gone.txt") is None


def test_concurrent_commands_share_one_server(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    env = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    with LocalS3(home) as s3:
        s3.ensure_bucket("bucket")
        token = server_process(home)
        files = []
        for index in range(6):
            files.append(tmp_path / f"f{index}.txt")
            files[-1].write_text(str(index))
        commands = [
            subprocess.Popen([SAGEGATE, "s3", "cp", str(path), f"s3://bucket/up/{path.name}"], env=env)
            for path in files
        ]
        assert [command.wait(timeout=120) for command in commands] == [0] * len(files)
        assert server_process(home) == token  # no command started or stopped another server
        listed = subprocess.run([SAGEGATE, "s3", "ls", "s3://bucket/up/"], env=env, capture_output=True, text=True)
        assert sorted(line.split()[-1] for line in listed.stdout.splitlines()) == [f"up/{p.name}" for p in files]
        for command, message in (
            (["ls", "s3://missing-bucket/"], "s3://missing-bucket/: no such bucket"),
            (["cp", "s3://bucket/up/absent.txt", str(tmp_path)], "s3://bucket/up/absent.txt: no such key"),
        ):
            failed = subprocess.run([SAGEGATE, "s3", *command], env=env, capture_output=True, text=True)
            assert failed.returncode == 1 and message in failed.stderr and "Traceback" not in failed.stderr
    assert server_process(home) is None


def test_a_command_killed_outright_leaves_a_server_the_next_command_uses_and_stops(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    env = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    holder = subprocess.Popen([SAGEGATE, "s3", "serve"], env=env, stdout=subprocess.PIPE, text=True)
    assert "local S3 at http://127.0.0.1:" in holder.stdout.readline()
    token = server_process(home)
    holder.send_signal(signal.SIGKILL)  # its lease goes with it; the server stays up
    holder.wait()
    assert token and process_alive(token)
    with LocalS3(home) as s3:
        assert server_process(home) == token
        s3.ensure_bucket("bucket")
    assert not process_alive(token)


def test_the_aws_cli_reads_the_objects_while_a_command_serves_them(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    env = {**os.environ, "SAGEGATE_HOME": str(home.root)}
    holder = subprocess.Popen([SAGEGATE, "s3", "serve"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = holder.stdout.readline().split()[3]
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        client.create_bucket(Bucket="bucket")
        client.put_object(Bucket="bucket", Key="models/m/model.tar.gz", Body=b"model")
        aws = subprocess.run(
            [str(Path(sys.executable).parent / "aws"), "--endpoint-url", endpoint, "s3", "ls", "s3://bucket/models/m/"],
            env={**env, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"},
            capture_output=True,
            text=True,
        )
        assert aws.returncode == 0 and "model.tar.gz" in aws.stdout, aws.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=30) == 0
    wait_for(lambda: server_process(home) is None, "the server to stop after its last user")


def test_an_old_plain_file_mirror_is_migrated_on_first_use(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    mirror = home.root / "s3"
    (mirror / "bucket" / "models" / "m").mkdir(parents=True)
    (mirror / "bucket" / "models" / "m" / "model.tar.gz").write_bytes(b"old model")
    (mirror / "bucket" / "data.csv").write_text("a,b\n1,2\n")
    (mirror / "other").mkdir()
    (mirror / "other" / "x").write_text("x")
    with LocalS3(home) as s3:
        assert s3.read("s3://bucket/models/m/model.tar.gz") == b"old model"
        assert s3.read("s3://bucket/data.csv") == b"a,b\n1,2\n" and s3.read("s3://other/x") == b"x"
    assert not mirror.exists()
    with LocalS3(home) as s3:  # and stays in the server
        assert s3.read("s3://bucket/models/m/model.tar.gz") == b"old model"


def test_start_up_reads_nothing_proportional_to_history(tmp_path: Path) -> None:
    """Entering the local S3 makes no S3 request at all, however many objects the store holds: the
    server opens its store, nothing is listed or loaded."""
    home = StateHome(tmp_path / "state").ensure()
    with LocalS3(home) as s3:
        s3.ensure_bucket("bucket")
        for index in range(200):
            s3.client.put_object(Bucket="bucket", Key=f"history/{index}", Body=b"x" * 1000)
    requests: list[str] = []
    original = boto3.session.Session.client

    def counting_client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-send", lambda request, **_: requests.append(request.url))
        return client

    patch = pytest.MonkeyPatch()
    patch.setattr(boto3.session.Session, "client", counting_client)
    try:
        with LocalS3(home) as s3:
            assert requests == []
            assert s3.read("s3://bucket/history/199") == b"x" * 1000
    finally:
        patch.undo()
    assert len(requests) == 1


def test_a_missing_bucket_or_key_is_an_error_not_an_empty_object(tmp_path: Path) -> None:
    home = StateHome(tmp_path / "state").ensure()
    with LocalS3(home) as s3:
        assert s3.read("s3://nobucket/key") is None
        with pytest.raises(ClientError):
            s3.download("s3://nobucket/key", tmp_path / "x")
        assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial"))
        assert read_json(home.s3_store / "server.json")["endpoint"] == s3.endpoint_url


def test_the_data_is_staged_in_the_background_over_an_old_mirrors_copy(tmp_path: Path) -> None:
    """`sagegate run` uploads the data on a thread of its own while it imports: the old mirror moves in
    first, so its copy of the same key never lands over the new data; the thread's lease ends with it."""
    home = StateHome(tmp_path / "state").ensure()
    config = load_config(MODELS / "breast-cancer.yaml", [f"data.source={tmp_path / 'data.csv'}"])
    project = Project()
    key = config.data_inputs()["InputDataUri"][1]
    (home.root / "s3" / project.bucket / Path(key).parent).mkdir(parents=True)
    (home.root / "s3" / project.bucket / key).write_text("old,data\n1,2\n")
    (tmp_path / "data.csv").write_text("new,data\n3,4\n")
    staged = staged_in_background(home, config, project)
    assert staged.result(timeout=60) == {"InputDataUri": f"s3://{project.bucket}/{key}"}
    wait_for(lambda: server_process(home) is None, "the staging thread to release the local S3", timeout=10)
    with LocalS3(home) as s3:
        assert s3.read(f"s3://{project.bucket}/{key}") == b"new,data\n3,4\n"
    missing = load_config(MODELS / "breast-cancer.yaml", [f"data.source={tmp_path / 'nope.csv'}"])
    with pytest.raises(FileNotFoundError, match=r"data\.source: file not found"):
        staged_in_background(home, missing, project).result(timeout=60)


def test_unchanged_data_is_not_stored_again_and_changed_data_is(tmp_path: Path) -> None:
    """Staging compares the file's sha256 with the one the object was stored with (its metadata)."""
    home = StateHome(tmp_path / "state").ensure()
    data = tmp_path / "data.csv"
    data.write_text("a,label\n1,0\n")
    config, project = load_config(MODELS / "breast-cancer.yaml", [f"data.source={data}"]), Project()
    uri = f"s3://{project.bucket}/{config.data_inputs()['InputDataUri'][1]}"
    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        methods: list[str] = []
        s3.client.meta.events.register("before-send", lambda request, **_: methods.append(request.method))
        assert stage_inputs(config, project, s3.client) == {"InputDataUri": uri}
        assert methods == ["HEAD", "PUT"] and s3.read(uri) == b"a,label\n1,0\n"
        methods.clear()
        stage_inputs(config, project, s3.client)
        assert methods == ["HEAD"]  # the same bytes: nothing stored again
        data.write_text("a,label\n2,1\n")
        methods.clear()
        stage_inputs(config, project, s3.client)
        assert methods == ["HEAD", "PUT"] and s3.read(uri) == b"a,label\n2,1\n"


def test_objects_are_stored_as_aws_stores_them_not_sniffed_and_gzipped(tmp_path: Path) -> None:
    """Written without a type, S3 keeps the bytes as `binary/octet-stream`. SeaweedFS would gzip what looks
    like text, at twice the CPU: our clients and the SDK executor's session name AWS's default instead."""
    home = StateHome(tmp_path / "state").ensure()
    text = b"".join(b"%d,%d,0.5\n" % (i, i % 7) for i in range(900_000))  # over the multipart threshold
    (tmp_path / "splits.csv").write_bytes(text)
    project = Project()

    def stored_bytes() -> int:
        return sum(volume.stat().st_size for volume in home.s3_store.rglob("*.dat"))

    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        before = stored_bytes()
        s3.client.put_object(Bucket=project.bucket, Key="ours/part.csv", Body=text[:1_000_000])
        sdk = local_session(project, "m", tmp_path / "jobs")  # the executor's: it stores the jobs' outputs
        sdk_uri = sdk.upload_data(str(tmp_path / "splits.csv"), bucket=project.bucket, key_prefix="sdk")
        assert stored_bytes() - before >= len(text) + 1_000_000  # gzipped, it would be a fifth of that
        for uri, body in ((f"s3://{project.bucket}/ours/part.csv", text[:1_000_000]), (sdk_uri, text)):
            bucket, key = split(uri)
            assert s3.client.head_object(Bucket=bucket, Key=key)["ContentType"] == "binary/octet-stream"
            assert s3.read(uri) == body


@pytest.mark.parametrize(
    ("status", "code", "uploads"),
    [(404, "404", True), (404, "NotFound", True), (403, "403", False), (403, "AccessDenied", False)],
)
def test_staging_uploads_only_when_the_object_is_missing_not_when_it_cannot_be_read(
    tmp_path: Path, status: int, code: str, uploads: bool
) -> None:
    """A HEAD that finds nothing means "not stored yet"; one that is refused must fail, not overwrite."""
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,label\n1,0\n")
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    client.meta.events.register("before-send", _reply)
    with Stubber(client) as stubber:
        stubber.add_client_error("head_object", code, http_status_code=status)
        if uploads:
            stubber.add_response("put_object", {"ETag": '"e"'})
            assert upload_unless_stored(client, data, "bucket", "key") is True
        else:
            with pytest.raises(ClientError, match=code):
                upload_unless_stored(client, data, "bucket", "key")
        stubber.assert_no_pending_responses()


def _reply(request: Any, **_: Any) -> None:
    """The Stubber answers before anything is sent; a request that gets this far is a test error."""
    raise AssertionError(f"{request.method} {request.url} reached the network")


def test_a_command_starts_the_server_early_with_its_bucket_made_and_given_its_first_volume(tmp_path: Path) -> None:
    """`sagegate run` starts the server while it imports, makes the project's bucket and writes to it once:
    SeaweedFS gives a bucket its first volume on its first write (~0.2 s), which the run's first step
    would otherwise wait for. The write leaves no object behind."""
    home = StateHome(tmp_path / "state").ensure()
    project = Project()
    with started_early(home, project):
        pass  # the block waits for the start
    assert list((home.s3_store / "data").glob(f"{project.bucket}_*.dat")), "no volume for the bucket"
    with LocalS3(home) as s3:
        assert s3.client.list_objects_v2(Bucket=project.bucket)["KeyCount"] == 0
