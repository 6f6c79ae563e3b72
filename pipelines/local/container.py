"""Run one SageMaker job from the SDK's docker-compose file, as a subprocess instead of a container.

Usage: `python -m pipelines.local.container docker-compose.yaml` (the SDK launches it; see
`sdk_patch`). The job gets the contract a SageMaker container gets:
- every `/opt/ml/...` path it is given (arguments, environment) resolves to the host folder the
  SDK mounted there, via the compose file's volumes;
- processing jobs run their entrypoint and arguments as given;
- training jobs get what the SageMaker training toolkit provides: the `sagemaker_submit_directory`
  code unpacked into a code folder, `SM_*` variables (SM_MODEL_DIR, SM_CHANNEL_*, SM_HPS, ...),
  and the user hyperparameters as `--name value` arguments to `sagemaker_program`.
A training job's StoppingCondition (`SAGEGATE_MAX_RUNTIME_SECONDS`, set by `sdk_patch`) is enforced
as SageMaker enforces it: past the limit the job is killed and fails with MaxRuntimeExceeded.
The runner and its job die with their parent (PR_SET_PDEATHSIG): a killed `sagegate run` leaves
no job behind that could still register a model.
With `training.checkpoints`, a training job's `/opt/ml/checkpoints` is synced with the local bucket
(`checkpoints.CheckpointSync`), as SageMaker syncs it with the CheckpointConfig's S3 prefix.
A failing job's reason (`/opt/ml/output/failure` or `/message`) is printed last and, when
`SAGEGATE_FAILURE_LOG` is set, appended there as JSON so the caller can report it. With
`SAGEGATE_JOB_LOGS` set, the job's output goes to `{job}.log` in that folder (CloudWatch's role), its
process group is written to `{job}.pid`, and `stop_job` stops it as StopTrainingJob does: the job
gets SIGTERM, whatever it saved is uploaded, and no failure is reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import yaml

from pipelines.local import forkserver
from pipelines.local.checkpoints import CHECKPOINTS_VARIABLE, CheckpointSync
from pipelines.local.forkserver import die_with_parent

OPT_ML = "/opt/ml"
MAX_RUNTIME_VARIABLE = "SAGEGATE_MAX_RUNTIME_SECONDS"  # the training job's StoppingCondition, set by sdk_patch
CODE_CACHE_VARIABLE = "SAGEGATE_CODE_CACHE"  # where training code is unpacked once per run (set by local_run)


class Volumes:
    """The container's filesystem as a folder: `root/opt/ml/...`, each mount a symlink to its host folder.

    A path under a mount resolves to the host folder (as a bind mount would); any other
    `/opt/ml` path, such as the parent of several mounted outputs, resolves inside `root`.
    """

    def __init__(self, specs: list[str], root: Path) -> None:
        self.root = root
        pairs = []
        for spec in specs:
            host, container = spec.split(":")[:2]
            pairs.append((container.rstrip("/"), host))
        self.pairs = sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)

    def materialize(self) -> None:
        for mount, host in sorted(self.pairs, key=lambda pair: len(pair[0])):
            Path(host).mkdir(parents=True, exist_ok=True)  # docker creates missing mount sources
            link = self.root / mount.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(host, target_is_directory=True)

    def host_path(self, container_path: str) -> str:
        for mount, host in self.pairs:
            if container_path == mount or container_path.startswith(mount + "/"):
                return host + container_path[len(mount) :]
        return str(self.root / container_path.lstrip("/"))

    def rewrite(self, value: str) -> str:
        return self.host_path(value) if value == OPT_ML or value.startswith(OPT_ML + "/") else value


def _environment(service: dict) -> dict[str, str]:
    env = dict(os.environ)
    for item in service.get("environment", []):
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _python(argv: list[str]) -> list[str]:
    """The image's `python3` is this interpreter (it has the image's packages)."""
    if argv and Path(argv[0]).name in {"python", "python3"}:
        return [sys.executable, *argv[1:]]
    return argv


def _fetch_code(uri: str, volumes: Volumes, code_dir: Path) -> None:
    """What the training toolkit does with sagemaker_submit_directory."""
    code_dir.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        cache = os.environ.get(CODE_CACHE_VARIABLE)
        if not cache:
            _download_code(parsed.netloc, parsed.path.lstrip("/"), code_dir)
            return
        source = cached_code(parsed.netloc, parsed.path.lstrip("/"), Path(cache))
    else:
        source = Path(volumes.rewrite(parsed.path if parsed.scheme == "file" else uri))
        if source.is_file():
            with tarfile.open(source) as tar:
                tar.extractall(code_dir, filter="data")
            return
    for item in source.iterdir():
        target = code_dir / item.name
        if not target.exists():
            target.symlink_to(item.resolve())


def _download_code(bucket: str, key: str, folder: Path, client: Any = None) -> None:
    if client is None:
        import boto3

        client = boto3.client("s3")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(folder, filter="data")


def cached_code(bucket: str, key: str, cache: Path, client: Any = None) -> Path:
    """The code unpacked once per run and key (the SDK's code keys are content-addressed): a tuning job's
    trials share one download (~0.2 s each, mostly importing boto3, measured with py-spy), and a run
    unpacks it ahead of its training job (`sdk_patch.code_fetched_ahead`). `client`: an S3 client to
    fetch it with, instead of a new one."""
    folder = cache / hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:24]
    if folder.is_dir():
        return folder
    partial = cache / f".{folder.name}.{os.getpid()}.{threading.get_ident()}"
    partial.mkdir(parents=True)
    _download_code(bucket, key, partial, client)
    try:
        os.rename(partial, folder)  # atomic; a concurrent trial that unpacked it first wins
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _decoded(value: object) -> object:
    """As the training toolkit reads hyperparameters.json: JSON where it parses, else the text itself
    (a tuner's `_tuning_objective_metric` arrives as bare text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def training_command(volumes: Volumes, env: dict[str, str], code_dir: Path) -> tuple[list[str], dict[str, str]]:
    config_dir = Path(volumes.host_path(f"{OPT_ML}/input/config"))
    raw = json.loads((config_dir / "hyperparameters.json").read_text())
    hyperparameters = {key: _decoded(value) for key, value in raw.items()}
    channels = sorted(json.loads((config_dir / "inputdataconfig.json").read_text()))
    resources = json.loads((config_dir / "resourceconfig.json").read_text())
    _fetch_code(hyperparameters["sagemaker_submit_directory"], volumes, code_dir)
    program = hyperparameters["sagemaker_program"]
    user_hps = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
    args = []
    for key, value in user_hps.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env.update(
        {
            "SM_MODEL_DIR": volumes.host_path(f"{OPT_ML}/model"),
            "SM_INPUT_DIR": volumes.host_path(f"{OPT_ML}/input"),
            "SM_INPUT_CONFIG_DIR": str(config_dir),
            "SM_OUTPUT_DIR": volumes.host_path(f"{OPT_ML}/output"),
            "SM_OUTPUT_DATA_DIR": volumes.host_path(f"{OPT_ML}/output/data"),
            "SM_CHANNELS": json.dumps(channels),
            "SM_HPS": json.dumps(user_hps),
            "SM_USER_ARGS": json.dumps(args),
            "SM_USER_ENTRY_POINT": program,
            "SM_MODULE_DIR": hyperparameters["sagemaker_submit_directory"],
            "SM_CURRENT_HOST": resources["current_host"],
            "SM_HOSTS": json.dumps(resources["hosts"]),
            "SM_NUM_CPUS": str(os.cpu_count() or 1),
            "SM_NUM_GPUS": "0",
            "SM_LOG_LEVEL": "20",
        }
    )
    for channel in channels:
        env[f"SM_CHANNEL_{channel.upper()}"] = volumes.host_path(f"{OPT_ML}/input/data/{channel}")
    for key, value in user_hps.items():
        env[f"SM_HP_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["SM_TRAINING_ENV"] = json.dumps({k[3:].lower(): v for k, v in env.items() if k.startswith("SM_")})
    return [sys.executable, program, *args], env


def _job_name(volumes: Volumes, env: dict[str, str]) -> str:
    config = Path(volumes.host_path(f"{OPT_ML}/config/processingjobconfig.json"))
    if config.is_file():
        return json.loads(config.read_text())["ProcessingJobName"]
    return env.get("TRAINING_JOB_NAME", "job")


def _report_failure(volumes: Volumes, job: str, code: int, reason: str | None = None) -> None:
    output = Path(volumes.host_path(f"{OPT_ML}/output"))
    reason = reason or next(
        (
            p.read_text().strip()
            for p in (output / "failure", output / "message")
            if p.is_file() and p.read_text().strip()
        ),
        f"job exited with code {code}",
    )
    print(f"FAILED {job}: {reason}", flush=True)
    log = os.environ.get("SAGEGATE_FAILURE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"job": job, "reason": reason}) + "\n")


def stop_job(log_dir: Path, job: str) -> bool:
    """Ask a running job to stop (the tuner's early stopping); False while it has not started yet. The
    marker is written only once the job can be signalled: a marker alone would report a later failure
    of the job as a stop."""
    try:
        group = int((log_dir / f"{job}.pid").read_text())
    except (FileNotFoundError, ValueError):  # not started, or its id half written
        return False
    (log_dir / f"{job}.stop").touch()
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(group, signal.SIGTERM)
    return True


def run_service(service: dict, workdir: Path) -> int:
    volumes = Volumes(service.get("volumes", []), workdir / "root")
    volumes.materialize()
    env = _environment(service)
    env["SM_OUTPUT_DIR"] = volumes.host_path(f"{OPT_ML}/output")
    env["PYTHONUNBUFFERED"] = "1"
    if "entrypoint" in service:
        command = _python([volumes.rewrite(arg) for arg in service["entrypoint"]])
        cwd = workdir
    elif service.get("command") == "train":
        code_dir = workdir / "code"
        command, env = training_command(volumes, env, code_dir)
        cwd = code_dir
    else:
        print(f"unsupported local job command {service.get('command')!r}", file=sys.stderr)
        return 2
    job = _job_name(volumes, env)
    limit = int(env.pop(MAX_RUNTIME_VARIABLE, "0") or 0) or None
    log_dir = os.environ.get("SAGEGATE_JOB_LOGS")
    log = open(Path(log_dir) / f"{job}.log", "w", encoding="utf-8") if log_dir else None
    checkpoints = env.pop(CHECKPOINTS_VARIABLE, None) if service.get("command") == "train" else None
    sync: contextlib.AbstractContextManager = contextlib.nullcontext()
    if checkpoints:
        env["SM_CHECKPOINT_DIR"] = volumes.host_path(f"{OPT_ML}/checkpoints")
        sync = CheckpointSync(checkpoints, Path(env["SM_CHECKPOINT_DIR"]))
    started = Path(log_dir) / f"{job}.pid" if log_dir else None
    try:
        with sync:
            code, reason = _supervise(command, env, cwd, log, limit, started)
    finally:
        if log:
            log.close()
    if log_dir and (Path(log_dir) / f"{job}.stop").exists():
        return 0  # stopped on request: not a failure (the caller knows it asked)
    if code != 0:
        _report_failure(volumes, job, code, reason)
    return code


def _supervise(
    command: list[str], env: dict[str, str], cwd: Path, log: TextIO | None, limit: int | None, started: Path | None
) -> tuple[int, str | None]:
    """Run the job in its own process group (forked warm by the run's fork server when there is one, once
    the server has the libraries of its successor's that the job's script imports); past `limit` seconds
    kill the group (MaxRuntimeExceeded). `started` gets the group's id."""
    server = os.environ.get(forkserver.SOCKET_VARIABLE)
    if server and command[0] == sys.executable:
        after = forkserver.successor_library(command[1]) if len(command) > 1 else ""
        try:
            output = (log or sys.stdout).fileno()
            connection, pid = forkserver.request_job(server, command, env, str(cwd), output, after)
        except OSError as error:
            print(f"warm job start unavailable ({error}): starting a fresh interpreter", file=sys.stderr)
        else:
            if started:
                started.write_text(str(pid))
            with connection:
                try:
                    return forkserver.wait_job(connection, limit), None
                except TimeoutError:
                    os.killpg(pid, signal.SIGKILL)
                    forkserver.wait_job(connection, None)
                    return 1, _past_limit(limit)
    output = {"stdout": log, "stderr": subprocess.STDOUT} if log else {}
    process = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True, preexec_fn=die_with_parent, **output)
    if started:
        started.write_text(str(process.pid))
    try:
        return process.wait(timeout=limit), None
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return 1, _past_limit(limit)


def _past_limit(limit: int | None) -> str:
    return (
        f"MaxRuntimeExceeded: the training job ran longer than its stopping condition "
        f"(MaxRuntimeInSeconds={limit}, training.max_runtime_seconds) and was stopped"
    )


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m pipelines.local.container docker-compose.yaml", file=sys.stderr)
        return 2
    die_with_parent()
    compose_file = Path(args[0])
    compose = yaml.safe_load(compose_file.read_text())
    for host, service in compose["services"].items():
        workdir = compose_file.parent / f"{host}-workdir"
        workdir.mkdir(exist_ok=True)
        code = run_service(service, workdir)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
