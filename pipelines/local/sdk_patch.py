"""The one place where sagegate patches sagemaker SDK internals.

`LocalPipelineSession` runs each job through `sagemaker.local.image._SageMakerContainer`,
which writes a docker-compose file and hands it to `docker compose up`. We keep everything
the SDK does (input download, config files, volume layout, artifact upload) and replace
only the command it launches: `_compose()` returns a call to `pipelines.local.container`,
which runs the job as a subprocess from that same compose file. The executor's step factory also
gets TuningStep (which it refuses): `pipelines.local.tuning` runs it, and the step's list-steps
metadata names the tuning job as on AWS. Also patched: the compose binary lookup (there is no
Docker), the ECR login (no registry), and the credential probe; the executor's second build of the
step graph its execution has just built; and the SDK-defaults validation, which the SDK repeats
against its JSON schema on every config lookup (hundreds per run): each distinct config is
validated once, and without re-checking the SDK's constant schema itself first. And the S3 transfers between
steps: every output a job uploads is also kept in the run's container root (a hard link of the file
the SDK deletes after its upload), and a later step's download of that object is a local copy of it
when S3 still holds what was uploaded (the same ETag and size); anything else is downloaded. Within
`uploads_behind(session)` (a local run) those uploads go on behind the run instead of between its
steps, from when the next job launches: a later step copies the kept files, and anything that reads S3
itself waits for them first.
Within `code_fetched_ahead(cache)` (a local run) the training code the estimator uploads is also unpacked
into the runners' code cache while the first steps run, so the training job does not wait to fetch it.

The patched names are private, so the SDK is pinned exactly; `tests/test_sdk_patch.py`
fails if an upgrade moves or reshapes any of them.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import sagemaker
import sagemaker.config.config_schema
import sagemaker.estimator
import sagemaker.local.utils
import sagemaker.utils
from sagemaker.local import entities, image, local_session
from sagemaker.local import pipeline as local_pipeline
from sagemaker.utils import unique_name_from_base
from sagemaker.workflow.steps import StepTypeEnum

from pipelines.local.container import MAX_RUNTIME_VARIABLE, cached_code
from pipelines.local.pins import PINNED, require
from pipelines.local.tuning import LocalTuningJob

RUNNER_MODULE = "pipelines.local.container"
GRAPH_MESSAGE = "Pipeline graph %s"  # logged on the SDK's executor logger as an execution starts

# (module, name) -> parameters the SDK calls it with (checked at install time)
_EXPECTED_SIGNATURES = {
    (image, "_SageMakerContainer._compose"): ["self", "detached"],
    (image, "_SageMakerContainer._get_compose_cmd_prefix"): [],
    (image, "_ecr_login_if_needed"): ["boto_session", "image"],
    (image, "_aws_credentials"): ["session"],
    (sagemaker.utils, "validate_sagemaker_config"): ["sagemaker_config"],
    (sagemaker.utils, "download_folder"): ["bucket_name", "prefix", "target", "sagemaker_session"],
    (sagemaker.local.utils, "move_to_destination"): [
        "source",
        "destination",
        "job_name",
        "sagemaker_session",
        "prefix",
    ],
    (sagemaker.estimator, "tar_and_upload_dir"): [
        "session",
        "bucket",
        "s3_key_prefix",
        "script",
        "directory",
        "dependencies",
        "kms_key",
        "s3_resource",
        "settings",
        "expected_bucket_owner",
    ],
    (local_pipeline, "_StepExecutorFactory.get"): ["self", "step"],
    (entities, "_LocalPipelineExecution._initialize_step_execution"): ["self", "steps"],
    (local_pipeline, "_StepExecutor.__init__"): ["self", "pipeline_executor", "step"],
    (local_pipeline, "LocalPipelineExecutor.__init__"): ["self", "execution", "sagemaker_session"],
    (entities, "_LocalPipelineExecutionStep.__init__"): [
        "self",
        "name",
        "step_type",
        "description",
        "display_name",
        "start_time",
        "end_time",
        "status",
        "properties",
        "failure_reason",
    ],
    (local_session, "LocalSagemakerClient.create_training_job"): [
        "self",
        "TrainingJobName",
        "AlgorithmSpecification",
        "OutputDataConfig",
        "ResourceConfig",
        "InputDataConfig",
        "Environment",
        "kwargs",
    ],
}
_original_create_training_job = local_session.LocalSagemakerClient.create_training_job
_original_executor_for = local_pipeline._StepExecutorFactory.get
_original_step_init = entities._LocalPipelineExecutionStep.__init__
_original_executor_init = local_pipeline.LocalPipelineExecutor.__init__
_original_initialize = entities._LocalPipelineExecution._initialize_step_execution
_original_download_folder = sagemaker.utils.download_folder
_original_move_to_destination = sagemaker.local.utils.move_to_destination
_original_tar_and_upload_dir = sagemaker.estimator.tar_and_upload_dir
_validated: set[str] = set()
KEPT_OUTPUTS = ".uploaded"  # in a run's container root: the files its jobs uploaded, as they uploaded them
# container root -> (bucket, key) -> (kept file, ETag, size); only roots that still exist are kept
_uploaded: dict[str, dict[tuple[str, str], tuple[Path, str, int]]] = {}
_uploaded_lock = threading.Lock()
# container root -> its uploads behind the run: (bucket, key) -> (kept file, the upload storing it)
_behind: dict[str, dict[tuple[str, str], tuple[Path, Future[None]]]] = {}
# container root -> uploads waiting for the run's next job to launch (or for a reader): (upload, its future)
_held: dict[str, list[tuple[Callable[[], None], Future[None]]]] = {}
_uploaders: dict[str, ThreadPoolExecutor] = {}
# the thread running a local run's pipeline -> its runners' code cache and the threads unpacking code into it
_fetching_ahead: dict[int, tuple[Path, list[threading.Thread]]] = {}


class UploadError(RuntimeError):
    """A job's output, uploaded behind the run, did not reach S3."""


class SdkPatchError(RuntimeError):
    """The installed sagemaker SDK no longer has the internals the local runner replaces."""


def _target(module: Any, dotted: str) -> Any:
    owner: Any = module
    for part in dotted.split("."):
        owner = getattr(owner, part, None)
        if owner is None:
            raise SdkPatchError(f"sagemaker {sagemaker.__version__}: {module.__name__}.{dotted} is gone")
    return owner


def check_sdk() -> None:
    require("sagemaker")
    for (module, dotted), expected in _EXPECTED_SIGNATURES.items():
        found = list(inspect.signature(_target(module, dotted)).parameters)
        if found != expected:
            raise SdkPatchError(
                f"sagemaker {sagemaker.__version__}: {module.__name__}.{dotted} takes {found}, "
                f"the local runner was written for {expected} (pinned {PINNED['sagemaker']})"
            )
    if not hasattr(image, "DOCKER_COMPOSE_FILENAME"):
        raise SdkPatchError("sagemaker.local.image.DOCKER_COMPOSE_FILENAME is gone")


def _compose(self: Any, detached: bool = False) -> list[str]:
    """The runner's command, as the SDK is about to launch the job: the run's held uploads start with it."""
    if detached:
        raise NotImplementedError("local endpoints are served by sagegate's endpoint manager, not the SDK")
    root = _container_root(self.sagemaker_session)
    if root:
        _release(root)
    return [sys.executable, "-m", RUNNER_MODULE, os.path.join(self.container_root, image.DOCKER_COMPOSE_FILENAME)]


def _no_compose_binary() -> list[str]:
    return []


def _no_ecr_login(boto_session: Any, image: str) -> bool:
    return False


def _credentials_from_environment(session: Any) -> None:
    """Jobs inherit the parent's environment (local S3 endpoint and its test credentials)."""
    return None


def _create_training_job(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The local client ignores StoppingCondition ("not supported in local mode"); pass the limit to the
    runner, which enforces it as SageMaker does (the job is stopped, MaxRuntimeExceeded)."""
    call = inspect.signature(_original_create_training_job).bind(self, *args, **kwargs)
    limit = (call.arguments.get("kwargs", {}).get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    if limit:
        call.arguments["Environment"] = {
            **(call.arguments.get("Environment") or {}),
            MAX_RUNTIME_VARIABLE: str(int(limit)),
        }
    return _original_create_training_job(*call.args, **call.kwargs)


def _validate_once(sagemaker_config: dict | None = None) -> None:
    """`get_sagemaker_config_value` re-validates the session's unchanging config against the SDK's JSON
    schema (meta-schema check included) on every lookup: ~60% of a local run's main-process time."""
    key = json.dumps(sagemaker_config, sort_keys=True, default=str)
    if key not in _validated:
        _check_against_sdk_schema(sagemaker_config)  # raises on an invalid config, as before
        _validated.add(key)


def _check_against_sdk_schema(sagemaker_config: dict | None) -> None:
    """The SDK's check (`jsonschema.validate(config, SDK schema)`: the same error for an invalid config)
    without first checking the SDK's constant schema against JSON Schema's meta-schema, nearly all of its
    cost (0.05-0.085 s per run, on the start-up's critical path); the tests check that schema once."""
    schema = sagemaker.config.config_schema.SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(sagemaker_config))
    if error is not None:
        raise error


def _container_root(session: Any) -> str | None:
    return ((getattr(session, "config", None) or {}).get("local") or {}).get("container_root")


def _listed(session: Any, bucket: str, prefix: str) -> dict[str, tuple[str, int]]:
    pages = session.s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: (item["ETag"], item["Size"]) for page in pages for item in page.get("Contents", [])}


class _UploadCall:
    """Stands in for the session in the SDK's `move_to_destination`: records the `upload_data` call it makes
    (the SDK's bucket and key prefix), so that the upload itself can be made later, from the run's copy."""

    def __init__(self) -> None:
        self.bucket = self.key_prefix = ""

    def upload_data(self, path: str, bucket: str, key_prefix: str) -> None:
        self.bucket, self.key_prefix = bucket, key_prefix


def _keep(source: str, root: str) -> tuple[Path, dict[str, Path], bool]:
    """Hard links of `source`'s files in the run's container root, by relative path, and whether every file
    could be linked (not across devices, say: such a file is downloaded as before)."""
    os.makedirs(os.path.join(root, KEPT_OUTPUTS), exist_ok=True)
    kept = Path(tempfile.mkdtemp(dir=os.path.join(root, KEPT_OUTPUTS)))
    links: dict[str, Path] = {}
    every = True
    for folder, _, names in os.walk(source):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), source)
            link = kept / relative
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(os.path.join(folder, name), link)
            except OSError:
                every = False
                continue
            links[relative] = link
    return kept, links, every


def _keys(key_prefix: str, links: dict[str, Path]) -> dict[str, Path]:
    """The key `upload_data` gives each file of the folder it uploads under `key_prefix`."""
    return {f"{key_prefix}/{relative.replace(os.sep, '/')}": link for relative, link in links.items()}


def _remember(root: str, session: Any, bucket: str, key_prefix: str, links: dict[str, Path]) -> None:
    """Record the kept files S3 now holds under the keys `upload_data` gave them, with their ETags."""
    stored = _listed(session, bucket, key_prefix)
    keys = _keys(key_prefix, links)
    with _uploaded_lock:
        for gone in [r for r in _uploaded if not os.path.isdir(r)]:
            del _uploaded[gone]
        entries = _uploaded.setdefault(root, {})
        for key, link in keys.items():
            if key in stored and stored[key][1] == link.stat().st_size:
                entries[(bucket, key)] = (link, *stored[key])
            behind = _behind.get(root, {})
            if behind.get((bucket, key), (None,))[0] == link:  # not a later upload of the same key
                del behind[(bucket, key)]


def _move_to_destination(source: str, destination: str, job_name: str, sagemaker_session: Any, prefix: str = "") -> str:
    """The SDK's upload (which deletes `source`), the files first hard-linked beside the run; behind the run
    when the run asked for it (`uploads_behind`) and every file could be kept."""
    root, target = _container_root(sagemaker_session), urlparse(destination)
    if not root or target.scheme != "s3" or not os.path.isdir(source):
        return _original_move_to_destination(source, destination, job_name, sagemaker_session, prefix)
    kept, links, every = _keep(source, root)
    uploader = _uploaders.get(root)
    if uploader is None or not every:
        uri = _original_move_to_destination(source, destination, job_name, sagemaker_session, prefix)
        if links:
            bucket, _, key_prefix = uri.removeprefix("s3://").partition("/")
            _remember(root, sagemaker_session, bucket, key_prefix, links)
        return uri
    call = _UploadCall()  # the SDK names the keys and removes `source`; its files live on in `kept`
    uri = _original_move_to_destination(source, destination, job_name, call, prefix)

    def upload() -> None:
        sagemaker_session.upload_data(str(kept), call.bucket, call.key_prefix)
        _remember(root, sagemaker_session, call.bucket, call.key_prefix, links)

    future: Future[None] = Future()
    with _uploaded_lock:
        _held.setdefault(root, []).append((upload, future))
        behind = _behind.setdefault(root, {})
        for key, link in _keys(call.key_prefix, links).items():
            behind[(call.bucket, key)] = (link, future)
    return uri


def _settle(upload: Callable[[], None], future: Future[None]) -> None:
    if future.set_running_or_notify_cancel():
        try:
            upload()
        except BaseException as error:  # the reader waiting on it (or the run's end) raises UploadError
            future.set_exception(error)
        else:
            future.set_result(None)


def _release(root: str) -> None:
    """Start the run's held uploads, in the order they were made."""
    with _uploaded_lock:
        held, uploader = _held.pop(root, []), _uploaders.get(root)
    for upload, future in held:
        if uploader is None:  # the run has ended: nothing is behind it any more
            _settle(upload, future)
        else:
            uploader.submit(_settle, upload, future)


def _caught_up(root: str, bucket: str | None = None, prefix: str = "") -> None:
    """Wait for the run's uploads behind it (those of keys under `prefix` in `bucket`, if named), held ones
    started first; raise UploadError naming the first that failed."""
    _release(root)
    with _uploaded_lock:
        waiting = [
            (f"s3://{in_bucket}/{key}", future)
            for (in_bucket, key), (_, future) in _behind.get(root, {}).items()
            if bucket is None or (in_bucket == bucket and key.startswith(prefix))
        ]
    for uri, future in waiting:
        try:
            future.result()
        except Exception as error:
            raise UploadError(f"uploading {uri} failed: {type(error).__name__}: {error}") from error


@contextmanager
def uploads_behind(session: Any) -> Iterator[None]:
    """Within it, the session's jobs' outputs upload on a thread of their own while the run goes on: the next
    step copies the kept files, as it would once uploaded. A job's outputs are held until the next job
    launches: started as the job ended, they slowed the next step's own S3 listings (which wait on the same
    server) by ~0.5 s before the fit (200k rows), where the job leaves a core idle. Whatever reads S3 itself
    first starts and waits for them (downloads of anything else, the executor's JsonGet reads), and so does
    leaving, which raises UploadError if an upload failed (unless the block itself raised). One upload at a
    time: a core's worth."""
    root = _container_root(session)
    if not root:
        raise ValueError("uploads behind a run need the session's local container_root")
    read_s3_file = session.read_s3_file

    def read_after_uploads(bucket: str, key: str) -> str:
        _caught_up(root, bucket, key)
        return read_s3_file(bucket, key)

    with _uploaded_lock:
        _uploaders[root] = ThreadPoolExecutor(1, thread_name_prefix="upload-behind")
    session.read_s3_file = read_after_uploads
    failed = True
    try:
        yield
        failed = False
    finally:
        del session.read_s3_file
        _release(root)
        with _uploaded_lock:
            uploader = _uploaders.pop(root)
        uploader.shutdown(wait=True)
        try:
            _caught_up(root)
        except UploadError:
            if not failed:
                raise
        finally:
            with _uploaded_lock:
                _behind.pop(root, None)


def _tar_and_upload_dir(*args: Any, **kwargs: Any) -> Any:
    """The SDK's upload of a training job's code; within `code_fetched_ahead` on this thread, the uploaded
    archive is also unpacked into that run's code cache, on a thread of its own."""
    uploaded = _original_tar_and_upload_dir(*args, **kwargs)
    ahead, target = _fetching_ahead.get(threading.get_ident()), urlparse(uploaded.s3_prefix)
    if ahead is None or target.scheme != "s3" or not target.path.endswith(".tar.gz"):
        return uploaded
    resource = inspect.signature(_original_tar_and_upload_dir).bind(*args, **kwargs).arguments.get("s3_resource")
    cache, threads = ahead

    def unpack() -> None:
        try:
            cached_code(target.netloc, target.path.lstrip("/"), cache, resource.meta.client if resource else None)
        except Exception:  # the training job's runner fetches it itself, and reports what fails
            pass

    thread = threading.Thread(target=unpack, name="code-ahead", daemon=True)
    thread.start()
    threads.append(thread)
    return uploaded


@contextmanager
def code_fetched_ahead(cache: Path) -> Iterator[None]:
    """Within it, training code the SDK uploads on this thread (as a local run's execution starts) is also
    unpacked into `cache`, the runners' code cache (`container.cached_code`), while the run's first steps go
    on: the training job's runner finds it there instead of importing boto3 to fetch it, which cost ~0.7 s
    before the fit (200k rows). Leaving waits for the unpacking: nothing writes in the cache once the run
    has removed it."""
    threads: list[threading.Thread] = []
    _fetching_ahead[threading.get_ident()] = (cache, threads)
    try:
        yield
    finally:
        del _fetching_ahead[threading.get_ident()]
        for thread in threads:
            thread.join()


def _download_folder(bucket_name: str, prefix: str, target: str, sagemaker_session: Any) -> None:
    """The SDK's download; objects this run uploaded (or is uploading behind it) are copied locally, while S3
    holds them as uploaded. Anything else is downloaded, once the run's uploads behind it are in.

    Which objects a prefix names is the SDK's reading: the object itself if one has that exact key,
    else every object whose key starts with it."""
    root = _container_root(sagemaker_session) or ""
    key_prefix = prefix.lstrip("/")
    with _uploaded_lock:
        kept = {key: entry for (bucket, key), entry in _uploaded.get(root, {}).items() if bucket == bucket_name}
        behind = {
            key: link
            for (bucket, key), (link, future) in _behind.get(root, {}).items()
            if bucket == bucket_name and not (future.done() and future.exception())
        }
    if any(key.startswith(key_prefix) for key in [*kept, *behind]):
        stored = _listed(sagemaker_session, bucket_name, key_prefix)
        names = set(stored) | {key for key in behind if key.startswith(key_prefix)}
        if not key_prefix.endswith("/") and key_prefix in names:
            wanted = {key_prefix: os.path.basename(key_prefix)}
        else:
            wanted = {k: k[len(key_prefix) :].lstrip("/") for k in names if not k.endswith("/")}
        copies = {k: behind[k] for k in wanted if k in behind}
        copies |= {k: kept[k][0] for k in wanted if k not in copies and kept.get(k, ())[1:] == stored.get(k)}
        if wanted and len(copies) == len(wanted) and all(path.is_file() for path in copies.values()):
            for key, relative in wanted.items():
                destination = os.path.join(target, relative)
                sagemaker.utils.validate_path_within_directory(destination, target, source_description=key)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                shutil.copyfile(copies[key], destination)  # a copy, not a link: a job may write over its inputs
            return
    _caught_up(root, bucket_name, key_prefix)  # S3 must hold what the run sent there before it is read
    _original_download_folder(bucket_name, prefix, target, sagemaker_session)


class _TuningStepExecutor(local_pipeline._StepExecutor):
    """CreateHyperParameterTuningJob with the step's evaluated arguments, run by LocalTuningJob."""

    def execute(self) -> dict[str, Any]:
        executor = self.pipline_executor  # sic: the SDK's spelling
        arguments = executor.evaluate_step_arguments(self.step)
        name = arguments.pop("HyperParameterTuningJobName", None) or unique_name_from_base(self.step.name)
        region = executor.sagemaker_session.boto_region_name
        try:
            return LocalTuningJob(name, arguments, executor.local_sagemaker_client, region).run()
        except Exception as error:  # the step fails with the reason, as the SDK's executors do
            executor.execution.update_step_failure(self.step.name, f"{type(error).__name__}: {error}")
            raise  # unreachable: update_step_failure raises StepExecutionException


def _executor_for(self: Any, step: Any) -> Any:
    if step.step_type == StepTypeEnum.TUNING:
        return _TuningStepExecutor(self.pipeline_executor, step)
    return _original_executor_for(self, step)


def _executor_init(self: Any, execution: Any, sagemaker_session: Any) -> None:
    """The SDK's executor set-up, without building the step graph again (~0.1 s): the execution built it
    from the same pipeline a moment before (`tests/test_sdk_patch.py` compares it with the SDK's)."""
    self.sagemaker_session = sagemaker_session
    self.execution = execution
    self.pipeline_dag = execution.pipeline_dag
    self.local_sagemaker_client = sagemaker_session.sagemaker_client
    self._blocked_steps = set()
    self._step_executor_factory = local_pipeline._StepExecutorFactory(self)


def _step_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_step_init(self, *args, **kwargs)
    self._step_type_to_output_format_map[StepTypeEnum.TUNING] = lambda: {
        "TuningJob": {"Arn": self.properties["HyperParameterTuningJobArn"]}
    }


def _initialize_step_execution(self: Any, steps: Any) -> None:
    """The SDK's check refuses any step type outside its list: tuning steps are registered here. The
    execution's step graph (the SDK's own, from the definition) is logged for whoever records the run."""
    tuning = [step for step in steps if getattr(step, "step_type", None) == StepTypeEnum.TUNING]
    _original_initialize(self, [step for step in steps if step not in tuning])
    for step in tuning:
        self.step_execution[step.name] = entities._LocalPipelineExecutionStep(
            step.name, step.step_type, step.description, step.display_name
        )
    graph = self.pipeline_dag
    steps_and_edges = {
        "steps": [{"name": name, "type": step.step_type.value} for name, step in graph.step_map.items()],
        "edges": sorted([source, target] for source, targets in graph.adjacency_list.items() for target in targets),
    }
    entities.logger.info(GRAPH_MESSAGE, json.dumps(steps_and_edges))


def install() -> None:
    """Idempotent. Raises SdkPatchError instead of half-patching an SDK it does not know."""
    require("sagemaker")
    if local_session.LocalSagemakerClient.create_training_job is _create_training_job:
        return  # installed: the signature checks ran against the SDK's own functions
    check_sdk()
    image._SageMakerContainer._compose = _compose
    image._SageMakerContainer._get_compose_cmd_prefix = staticmethod(_no_compose_binary)
    image._ecr_login_if_needed = _no_ecr_login
    image._aws_credentials = _credentials_from_environment
    local_session.LocalSagemakerClient.create_training_job = _create_training_job
    local_pipeline._StepExecutorFactory.get = _executor_for
    local_pipeline.LocalPipelineExecutor.__init__ = _executor_init
    entities._LocalPipelineExecutionStep.__init__ = _step_init
    entities._LocalPipelineExecution._initialize_step_execution = _initialize_step_execution
    sagemaker.local.utils.move_to_destination = _move_to_destination
    sagemaker.utils.download_folder = _download_folder
    sagemaker.estimator.tar_and_upload_dir = _tar_and_upload_dir
    validate_config_once()


def validate_config_once() -> None:
    """Only the config-validation memo: also used when definitions are exported for AWS."""
    require("sagemaker")
    sagemaker.utils.validate_sagemaker_config = _validate_once
