"""The SDK patch: pinned version, expected internals, and the runner it launches.

If a sagemaker upgrade moves or reshapes a patched internal, these fail first.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sagemaker
import sagemaker.local.utils
import sagemaker.utils
from sagemaker.local import image

from pipelines.local import sdk_patch
from pipelines.local.pins import PINNED
from tests.conftest import MODELS


def test_sagemaker_is_the_pinned_version_and_below_3():
    assert sagemaker.__version__ == PINNED["sagemaker"]
    assert int(sagemaker.__version__.split(".")[0]) < 3


def test_install_replaces_only_the_compose_hooks():
    sdk_patch.install()
    sdk_patch.install()  # idempotent
    container = image._SageMakerContainer.__new__(image._SageMakerContainer)
    container.container_root, container.sagemaker_session = "/tmp/job", None  # no run: nothing held to release
    command = container._compose()
    assert command == [sys.executable, "-m", "pipelines.local.container", "/tmp/job/docker-compose.yaml"]
    assert image._SageMakerContainer._get_compose_cmd_prefix() == []
    assert image._ecr_login_if_needed(None, "some/image") is False
    # the rest of the job machinery is the SDK's own
    for name in ("process", "train", "_generate_compose_file", "_prepare_processing_volumes", "retrieve_artifacts"):
        assert getattr(image._SageMakerContainer, name).__module__ == "sagemaker.local.image"


def test_detached_serving_is_refused():
    container = image._SageMakerContainer.__new__(image._SageMakerContainer)
    container.container_root = "/tmp/job"
    with pytest.raises(NotImplementedError):
        sdk_patch._compose(container, detached=True)


def test_a_reshaped_internal_is_detected(monkeypatch):
    def _compose(self, detached, extra):  # what an upgrade might do
        return []

    monkeypatch.setattr(image._SageMakerContainer, "_compose", _compose)
    with pytest.raises(sdk_patch.SdkPatchError, match="_compose takes"):
        sdk_patch.check_sdk()


def test_a_removed_internal_is_detected(monkeypatch):
    monkeypatch.delattr(image, "_ecr_login_if_needed")
    with pytest.raises(sdk_patch.SdkPatchError, match="_ecr_login_if_needed is gone"):
        sdk_patch.check_sdk()


def test_the_sdk_defaults_are_validated_once_per_distinct_config_and_still_refused_when_invalid(monkeypatch):
    from sagemaker.utils import get_sagemaker_config_value

    sdk_patch.install()
    checks: list[dict] = []
    monkeypatch.setattr(sdk_patch, "_check_against_sdk_schema", lambda config: checks.append(config))
    monkeypatch.setattr(sdk_patch, "_validated", set())

    class Session:
        def __init__(self, config: dict) -> None:
            self.sagemaker_config = config

    good = Session({"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    for _ in range(50):
        assert get_sagemaker_config_value(good, "SageMaker.PythonSDK.Modules.TelemetryOptOut") is True
    assert len(checks) == 1
    monkeypatch.undo()
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        get_sagemaker_config_value(Session({"SchemaVersion": "1.0", "NotAKey": {}}), "SageMaker.PythonSDK")


@pytest.mark.parametrize(
    "config",
    [
        {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
        {"SchemaVersion": "1.0", "NotAKey": {}},
        {"SchemaVersion": "2.0"},
        {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": "yes"}}}},
        {"SageMaker": {"TrainingJob": {"EnableNetworkIsolation": 1, "Unknown": True}}},
    ],
)
def test_the_config_check_answers_as_the_sdk_s_own_without_rechecking_its_schema(config: dict) -> None:
    """The SDK's check is `jsonschema.validate(config, its schema)`, which first checks that constant schema
    against JSON Schema's meta-schema (0.05-0.085 s per run). Ours skips only that: the schema is valid
    (checked here) and each config gets the SDK's answer, the same error for an invalid one."""
    import jsonschema
    from sagemaker.config import config as sdk_config
    from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA as schema

    jsonschema.validators.validator_for(schema).check_schema(schema)

    def answer(check: Callable[[dict], None]) -> tuple[str, list] | None:
        try:
            check(config)
        except jsonschema.ValidationError as error:
            return error.message, list(error.absolute_path)
        return None

    assert answer(sdk_patch._check_against_sdk_schema) == answer(sdk_config.validate_sagemaker_config)


def test_a_step_reads_what_an_earlier_step_uploaded_from_the_run_s_copy_while_s3_still_holds_it(
    tmp_path: Path,
) -> None:
    """A job's outputs are uploaded as before (S3 holds them, same keys); a later step's download of
    them is a local copy while S3 holds the same object (ETag and size), a download once it does not."""

    from pipelines.local.s3 import LocalS3
    from pipelines.sessions import local_session
    from pipelines.state import Project, StateHome

    home, project = StateHome(tmp_path / "state").ensure(), Project()
    gets: list[str] = []

    def job_output(name: str, files: dict[str, bytes]) -> Path:
        folder = tmp_path / name
        for relative, body in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(body)
        return folder

    splits = {"train/train.csv": os.urandom(9 * 1024 * 1024), "test/test.csv": b"a,b\n1,2\n"}  # multipart, single
    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        session = local_session(project, "m", tmp_path / "jobs")  # installs the patch
        events = session.s3_resource.meta.client.meta.events
        events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
        uri = sagemaker.local.utils.move_to_destination(
            str(job_output("pre", splits)), f"s3://{project.bucket}/run/pre", "", session
        )
        assert not (tmp_path / "pre").exists()  # the SDK's own clean-up, as before
        model = sagemaker.local.utils.move_to_destination(
            str(job_output("train", {"model.tar.gz": b"model-1"})), f"s3://{project.bucket}/run", "job", session,
            prefix="output",
        )  # fmt: skip
        for relative, body in splits.items():  # S3 holds every output under the SDK's keys
            assert s3.read(f"{uri}/{relative}") == body

        whole, one = tmp_path / "in-whole", tmp_path / "in-model"
        whole.mkdir(), one.mkdir()
        sagemaker.utils.download_folder(project.bucket, "/run/pre", str(whole), session)
        sagemaker.utils.download_folder(
            project.bucket, f"{model.removeprefix(f's3://{project.bucket}/')}/model.tar.gz", str(one), session
        )
        assert {str(p.relative_to(whole)): p.read_bytes() for p in whole.rglob("*") if p.is_file()} == splits
        assert (one / "model.tar.gz").read_bytes() == b"model-1"
        assert gets == []  # all of it from the run's copy

        (whole / "test" / "test.csv").write_bytes(b"changed by the job\n")  # a job writes over its input
        s3.client.put_object(Bucket=project.bucket, Key="run/job/output/model.tar.gz", Body=b"model-2")  # replaced
        again, model_again = tmp_path / "again", tmp_path / "model-again"
        again.mkdir(), model_again.mkdir()
        sagemaker.utils.download_folder(project.bucket, "run/pre/test", str(again), session)
        sagemaker.utils.download_folder(project.bucket, "run/job/output/model.tar.gz", str(model_again), session)
        assert (again / "test.csv").read_bytes() == splits["test/test.csv"]  # the run's copy is not the job's
        assert (model_again / "model.tar.gz").read_bytes() == b"model-2"  # S3's object, not the stale copy
        assert gets == ["run/job/output/model.tar.gz"]


def test_the_executor_uses_the_step_graph_its_execution_built_and_is_otherwise_the_sdk_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK builds the step graph twice as an execution starts (~0.1 s each): once for the execution,
    once for its executor. The patched executor takes the execution's and sets up what the SDK's does."""
    from sagemaker.local.pipeline import LocalPipelineExecutor
    from sagemaker.workflow.pipeline import PipelineGraph

    from pipelines.config import load_config
    from pipelines.definition import build_pipeline
    from pipelines.local.s3 import LocalS3
    from pipelines.sessions import local_session
    from pipelines.state import Project, StateHome

    project = Project()
    with LocalS3(StateHome(tmp_path / "state").ensure()) as s3:
        s3.ensure_bucket(project.bucket)
        session = local_session(project, "breast-cancer", tmp_path / "jobs")  # installs the patch
        pipeline = build_pipeline(load_config(MODELS / "breast-cancer.yaml"), project, session, local=True)
        graph = PipelineGraph.from_pipeline(pipeline)  # as the execution builds it (its steps upload their code)
        execution = type("Execution", (), {"pipeline": pipeline, "pipeline_dag": graph})()
        builds: list[object] = []
        build = PipelineGraph.from_pipeline
        monkeypatch.setattr(PipelineGraph, "from_pipeline", classmethod(lambda cls, p: builds.append(p) or build(p)))
        ours = LocalPipelineExecutor(execution, session)
        assert builds == [] and ours.pipeline_dag is graph
        theirs = LocalPipelineExecutor.__new__(LocalPipelineExecutor)
        sdk_patch._original_executor_init(theirs, execution, session)
    assert builds == [pipeline]  # the SDK's own set-up builds it again
    assert sorted(vars(ours)) == sorted(vars(theirs))  # an upgrade that sets up more fails here
    assert [step.name for step in ours.pipeline_dag] == [step.name for step in theirs.pipeline_dag]


def test_within_a_run_outputs_upload_behind_it_the_next_step_copies_them_and_s3_reads_wait(tmp_path: Path) -> None:
    """`uploads_behind`: a job's outputs are moved (the SDK's keys, its clean-up) before S3 holds them; a later
    step copies them meanwhile, the executor's own S3 reads (JsonGet) wait for them, and leaving the block
    leaves S3 holding every one of them."""
    import threading

    from botocore.exceptions import ClientError

    from pipelines.local.s3 import LocalS3
    from pipelines.sessions import local_session
    from pipelines.state import Project, StateHome

    home, project = StateHome(tmp_path / "state").ensure(), Project()
    outputs = {"train/train.csv": os.urandom(9 * 1024 * 1024), "evaluation.json": b'{"metrics": {"f1": 0.9}}'}
    folder = tmp_path / "out"
    for relative, body in outputs.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(body)
    uploading, release, gets = threading.Event(), threading.Event(), []

    def waits_for_upload(thread: threading.Thread) -> bool:
        """`thread` is blocked on an upload's result (`Future.result`), as its stack shows."""
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None and frame.f_code.co_name != "result":
            frame = frame.f_back
        return frame is not None and "concurrent/futures" in frame.f_code.co_filename

    def held(**_: object) -> None:  # every write to S3 waits for the test
        uploading.set()
        assert release.wait(60), "the test never released the upload"

    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        session = local_session(project, "m", tmp_path / "jobs")
        events = session.s3_resource.meta.client.meta.events
        for operation in ("PutObject", "CreateMultipartUpload"):
            events.register(f"before-call.s3.{operation}", held)
        events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
        with sdk_patch.uploads_behind(session):
            uri = sagemaker.local.utils.move_to_destination(str(folder), f"s3://{project.bucket}/run/eval", "", session)
            assert not folder.exists()  # the SDK's clean-up, as before
            copied = tmp_path / "in"
            copied.mkdir()
            sagemaker.utils.download_folder(project.bucket, "run/eval", str(copied), session)
            assert {str(p.relative_to(copied)): p.read_bytes() for p in copied.rglob("*") if p.is_file()} == outputs
            assert gets == []  # the run's copy
            assert not uploading.is_set()  # held: the next step's own S3 calls (its listing above) go first
            job = sagemaker.local.image._SageMakerContainer("local", 1, "image", session)
            job.container_root = str(tmp_path / "jobs" / "next")
            assert job._compose()[-1].endswith("docker-compose.yaml")  # the next job launches: the upload starts
            assert uploading.wait(30)
            with pytest.raises(ClientError):  # S3 does not hold it yet
                s3.client.head_object(Bucket=project.bucket, Key="run/eval/evaluation.json")
            again = tmp_path / "again"
            again.mkdir()
            sagemaker.utils.download_folder(project.bucket, "run/eval", str(again), session)
            assert {str(p.relative_to(again)): p.read_bytes() for p in again.rglob("*") if p.is_file()} == outputs
            assert gets == []  # the run's copy, while the upload waits

            read: list[str] = []
            reader = threading.Thread(
                target=lambda: read.append(session.read_s3_file(project.bucket, "run/eval/evaluation.json"))
            )
            reader.start()
            deadline = time.monotonic() + 30
            while not waits_for_upload(reader) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waits_for_upload(reader) and not read  # the JsonGet read waits for the upload instead of failing
            release.set()
            reader.join(30)
            assert read == [outputs["evaluation.json"].decode()]
        for relative, body in outputs.items():
            assert s3.read(f"{uri}/{relative}") == body
        assert "read_s3_file" not in vars(session)  # the session's own method again


def test_an_upload_behind_the_run_that_fails_fails_the_run_naming_the_object(tmp_path: Path) -> None:

    from pipelines.local.s3 import LocalS3
    from pipelines.sessions import local_session
    from pipelines.state import Project, StateHome

    home, project = StateHome(tmp_path / "state").ensure(), Project()

    def output(name: str) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.tar.gz").write_bytes(b"model")
        return str(tmp_path / name)

    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        session = local_session(project, "m", tmp_path / "jobs")
        failure = r"uploading s3://no-such-bucket/run/job/output/model\.tar\.gz failed: S3UploadFailedError"
        with pytest.raises(sdk_patch.UploadError, match=failure):
            with sdk_patch.uploads_behind(session):
                sagemaker.local.utils.move_to_destination(
                    output("a"), "s3://no-such-bucket/run", "job", session, prefix="output"
                )
        # a block that fails for its own reason raises that, not the upload's
        with pytest.raises(KeyError, match="the run's own"):
            with sdk_patch.uploads_behind(session):
                sagemaker.local.utils.move_to_destination(
                    output("b"), "s3://no-such-bucket/run", "job", session, prefix="output"
                )
                raise KeyError("the run's own")


def test_within_a_run_the_training_code_the_sdk_uploads_is_unpacked_into_the_runners_cache(tmp_path: Path) -> None:
    """`code_fetched_ahead`: the code archive the estimator uploads (through the SDK's `tar_and_upload_dir`)
    is fetched back from S3 and unpacked into the code cache while the run goes on, where the training
    job's runner (`container.cached_code`) finds it without asking S3; outside the block nothing is."""
    import sagemaker.estimator

    from pipelines.local.container import cached_code
    from pipelines.local.s3 import LocalS3
    from pipelines.sessions import local_session
    from pipelines.state import Project, StateHome

    home, project = StateHome(tmp_path / "state").ensure(), Project()
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text("print('trained')\n")
    cache, gets = tmp_path / "jobs" / ".code", []
    with LocalS3(home) as s3:
        s3.ensure_bucket(project.bucket)
        session = local_session(project, "m", tmp_path / "jobs")  # installs the patch
        client = session.s3_resource.meta.client
        client.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params))

        def upload(prefix: str) -> str:
            return sagemaker.estimator.tar_and_upload_dir(
                session=session.boto_session, bucket=project.bucket, s3_key_prefix=prefix, script="train.py",
                directory=str(source), s3_resource=session.s3_resource, settings=session.settings,
            ).s3_prefix  # fmt: skip

        with sdk_patch.code_fetched_ahead(cache):
            uri = upload("code/one")
        assert uri == f"s3://{project.bucket}/code/one/sourcedir.tar.gz"
        assert [get["Key"] for get in gets] == ["code/one/sourcedir.tar.gz"]  # by the run's own S3 client
        (unpacked,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
        assert (unpacked / "train.py").read_text() == "print('trained')\n"
        client.delete_object(Bucket=project.bucket, Key="code/one/sourcedir.tar.gz")
        assert cached_code(project.bucket, "code/one/sourcedir.tar.gz", cache) == unpacked  # S3 not asked

        upload("code/two")  # not within a run: uploaded, not unpacked
        assert len(gets) == 1 and [p for p in cache.iterdir() if not p.name.startswith(".")] == [unpacked]
        assert s3.read(f"s3://{project.bucket}/code/two/sourcedir.tar.gz")
