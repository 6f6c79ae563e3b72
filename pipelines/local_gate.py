"""Run the deployment gate locally: the exported ASL in moto's Step Functions interpreter.

The state machine, its Lambda functions and their IAM roles are created in a moto server of
this process exactly as CloudFormation would create them; the Lambda tasks call the real handlers
in `lambdas/`, the SageMaker tasks the local endpoint manager, and S3 calls (the evaluation
report, the champion artifact) go to the state folder's local S3. Each execution's history is
kept as `executions/{name}.json` in the state folder (moto itself forgets on restart).
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
import uuid
import zipfile
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

from pipelines.config import ModelConfig
from pipelines.containers import image_tag, lambda_handler_path
from pipelines.environ import SavedEnvironment
from pipelines.gate import GATE_FUNCTIONS, deploy_definition, gate_definition, model_settings, substitute
from pipelines.local import sfn_patch
from pipelines.local.endpoints import EndpointManager
from pipelines.local.moto_server import InProcessMotoServer
from pipelines.local.s3 import FAKE_CREDENTIALS, LocalS3
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError, read_json, read_records, write_json

POLL_TIMEOUT_SECONDS = 900


ROLLOUT_POLL_SECONDS = 1


class GateError(RuntimeError):
    """The gate could not be started (unknown model version, missing registration...)."""


@dataclass
class ExecutionRecord:
    name: str
    arn: str
    state_machine: str
    status: str
    started_at: str
    stopped_at: str | None
    duration_seconds: float
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    error: str | None = None
    cause: str | None = None
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    endpoint: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    definition: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        if self.status == "SUCCEEDED":
            return f"deployed ({self.decision.removeprefix('deploy_')}) to {self.endpoint}"
        if self.error == "Sagegate.Rejected":
            return "rejected"
        return f"failed ({self.error})"


def _load_handler_module(kind: str) -> ModuleType:
    path = lambda_handler_path(kind)
    spec = importlib.util.spec_from_file_location(f"sagegate_lambda_{kind}", path)
    if spec is None or spec.loader is None:
        raise GateError(f"cannot load Lambda handler {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the event models' annotations through it
    spec.loader.exec_module(module)
    return module


def _captured(module: ModuleType, log_path: Path) -> sfn_patch.Handler:
    """Call the handler with its structured logs and metrics going to the execution's log file."""

    def handler(event: dict[str, Any], context: Any) -> Any:
        with log_path.open("a") as stream, redirect_stdout(stream):
            previous = module.logger.registered_handler.setStream(stream)
            try:
                return module.lambda_handler(event, context)
            finally:
                module.logger.registered_handler.setStream(previous)

    return handler


def serving_container(project: Project, model_data_url: str) -> dict[str, Any]:
    """The PrimaryContainer of a local deployment: the runtime image (its entry point serves the model),
    as the Model Registry version names it on AWS."""
    return {"Image": project.image_uri(image_tag()), "ModelDataUrl": model_data_url}


def gate_input(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    version: str | None = None,
    *,
    prefer_alias: str | None = None,
) -> dict[str, Any]:
    """The execution input for one registered version (`registry.find_version`'s choice: without a
    version, the one carrying `prefer_alias`, else the newest): where its evaluation is, what to deploy."""
    from pipelines.registry import VersionNotFound, find_version

    name = project.registered_model(config.name)
    try:
        chosen = find_version(home, name, version, prefer_alias=prefer_alias)
    except VersionNotFound as error:
        raise GateError(f"model {config.name}: {error}") from None
    execution_id = chosen["execution_id"]
    return {
        "model": config.name,
        "registered_model": name,
        "version": chosen["version"],
        "model_package_arn": None,
        "evaluation_uri": project.evaluation_uri(config.name, execution_id),
        "container": serving_container(project, chosen["model_data_uri"]),
        **model_settings(config, project),
        # a rolling update advances as the gate describes it: once a second, so every batch's alarms are read
        "poll_seconds": 0 if config.deployment.rollout.type == "all_at_once" else ROLLOUT_POLL_SECONDS,
    }


class LocalGate:
    """One local Step Functions service with the gate deployed in it (use as a context manager)."""

    def __init__(self, project: Project, home: StateHome, handlers: dict[str, sfn_patch.Handler] | None = None) -> None:
        self.project = project
        self.home = home
        self.manager = EndpointManager(home, project)
        self._extra_handlers = handlers or {}
        self._s3 = LocalS3(home, project.region)
        self._moto: InProcessMotoServer | None = None
        self.endpoint_url = ""
        self.state_machine_arn = ""
        self.deploy_machine_arn = ""
        self._deploy_machine: dict[str, Any] = {}
        self.definition: dict[str, Any] = {}
        self.deploy_definition: dict[str, Any] = {}
        self.logs = home.executions / "logs"
        self._environment = SavedEnvironment()
        self._session: Any = None

    def prepare(self) -> LocalGate:
        """Start moto and create the gate's role, functions and state machines in it, touching neither
        this process's environment nor moto's patches: `sagegate run` does this on a thread while the
        model trains (the first deployment costs ~0.6 s of moto's lazy set-up). Entering does it if not done."""
        if self._moto is None:
            self._start_moto()
            self._create_resources()
        return self

    def close(self) -> None:
        """Stop moto (a gate prepared, then not entered: the run failed)."""
        if self._moto is not None:
            self._moto.stop()
            self._moto = None

    def __enter__(self) -> LocalGate:
        self.home.ensure()
        self.logs.mkdir(parents=True, exist_ok=True)
        self._s3.__enter__()
        try:
            self.prepare()
            self._install_handlers()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.close()
            self._s3.__exit__(*exc)
        finally:
            sfn_patch.uninstall()
            self._environment.restore()

    def client(self, service: str) -> Any:
        """A client of the gate's moto server, with moto's placeholder credentials whatever the environment,
        from the gate's own boto3 session (`prepare` may run on another thread than the caller's others)."""
        import boto3

        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.project.region,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def _start_moto(self) -> None:
        """Step Functions, Lambda and IAM in a moto server on 127.0.0.1 (S3 stays the local S3's)."""
        self._moto = InProcessMotoServer()
        self._moto.start()
        port = self._moto.port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        # moto's backends live in this process: a previous gate's roles and functions go first
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def _function_environment(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.home.mlflow_tracking_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "sagegate",
        }

    def _create_resources(self) -> None:
        requests.post(
            f"{self.endpoint_url}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}},
            timeout=10,
        ).raise_for_status()
        iam, lambdas = self.client("iam"), self.client("lambda")
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName="sagegate-local-gate", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("app.py", "# the local runtime calls lambdas/<function>/app.py directly\n")
        arns = {}
        for kind in GATE_FUNCTIONS:
            arns[kind] = lambdas.create_function(
                FunctionName=self.project.gate_function_name(kind),
                Runtime="python3.12",
                Role=role["Arn"],
                Handler="app.lambda_handler",
                Code={"ZipFile": archive.getvalue()},
                Timeout=60,
                MemorySize=512,
                Environment={"Variables": self._function_environment()},
            )["FunctionArn"]
        self.definition = gate_definition()
        self.deploy_definition = deploy_definition()
        substitutions = {
            "EvaluatorFunctionArn": arns["evaluator"],
            "PromoterFunctionArn": arns["promoter"],
            "InferenceRoleArn": self.project.inference_role_arn,
        }
        sfn = self.client("stepfunctions")
        self.state_machine_arn = sfn.create_state_machine(
            name=self.project.state_machine_name,
            definition=substitute(self.definition, substitutions),
            roleArn=role["Arn"],
        )["stateMachineArn"]
        self._deploy_machine = {
            "name": self.project.name("deploy"),
            "definition": substitute(self.deploy_definition, substitutions),
            "roleArn": role["Arn"],
        }

    def _install_handlers(self) -> None:
        """The environment the functions and moto's interpreter see, then the handlers moto's Lambda calls:
        set here, on the entering thread, never from the interpreter's threads while they run."""
        assert self._moto is not None, "prepare() first"
        # where moto's interpreter and the handlers send service calls (S3: AWS_ENDPOINT_URL_S3, the local S3),
        # and the functions' own variables, as Lambda gives them (read as the handlers load)
        moto = {"MOTO_PORT": str(self._moto.port), "AWS_ENDPOINT_URL": self.endpoint_url}
        self._environment.set({**moto, **self._function_environment()})
        handlers = {
            self.project.gate_function_name(kind): _captured(_load_handler_module(kind), self.logs / f"{kind}.log")
            for kind in GATE_FUNCTIONS
        }
        sfn_patch.install(self.manager, {**handlers, **self._extra_handlers})

    def _deploy_machine_arn(self) -> str:
        """The deploy-only machine, created on first use: only provisioning runs it, and moto's ASL
        parser takes ~0.2 s per machine."""
        if not self.deploy_machine_arn:
            machine = self.client("stepfunctions").create_state_machine(**self._deploy_machine)
            self.deploy_machine_arn = machine["stateMachineArn"]
        return self.deploy_machine_arn

    def execute(
        self, execution_input: dict[str, Any] | str, name: str | None = None, *, deploy_only: bool = False
    ) -> ExecutionRecord:
        """Start one execution, wait for it to end, and persist its history. `deploy_only`: the
        gate's deploy branches for an input that already carries its `evaluation` (provisioning)."""
        sfn = self.client("stepfunctions")
        name = name or f"gate-{uuid.uuid4().hex[:12]}"
        text = execution_input if isinstance(execution_input, str) else json.dumps(execution_input)
        machine = self._deploy_machine_arn() if deploy_only else self.state_machine_arn
        arn = sfn.start_execution(stateMachineArn=machine, name=name, input=text)["executionArn"]
        deadline = time.monotonic() + POLL_TIMEOUT_SECONDS
        while (description := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            if time.monotonic() > deadline:
                sfn.stop_execution(executionArn=arn, error="Sagegate.Timeout", cause="local gate timed out")
            time.sleep(0.05)
        events = []
        for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
            events += page["events"]
        definition = self.deploy_definition if deploy_only else self.definition
        record = _execution_record(description, events, definition, text)
        save_execution(self.home, record)
        return record


def json_or_text(value: str | None) -> Any:
    """A JSON text as its value; anything else (an error message) as it is."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _execution_record(
    description: dict[str, Any], events: list[dict[str, Any]], definition: dict[str, Any], input_text: str
) -> ExecutionRecord:
    started, stopped = description["startDate"], description.get("stopDate")
    record = ExecutionRecord(
        name=description["name"],
        arn=description["executionArn"],
        state_machine=description["stateMachineArn"],
        status=description["status"],
        started_at=started.isoformat(),
        stopped_at=stopped.isoformat() if stopped else None,
        duration_seconds=round((stopped - started).total_seconds(), 3) if stopped else 0.0,
        input=json_or_text(input_text),
        output=json_or_text(description.get("output")),
        error=description.get("error"),
        cause=description.get("cause"),
        events=[_plain(event) for event in events],
        definition=definition,
    )
    for event in events:
        exited = event.get("stateExitedEventDetails")
        if exited and exited["name"] in ("EvaluateModel", "ChooseDeployment") and record.decision is None:
            evaluation = (json_or_text(exited.get("output")) or {}).get("evaluation") or {}
            record.decision = evaluation.get("decision")
            record.reasons = evaluation.get("reasons") or []
            record.endpoint = (evaluation.get("target") or {}).get("endpoint_name")
    if record.decision is None and record.cause:  # EvaluationFailed: the handler's error message
        cause = json_or_text(record.cause)
        record.reasons = [cause.get("errorMessage", record.cause) if isinstance(cause, dict) else str(cause)]
    return record


def save_execution(home: StateHome, record: ExecutionRecord) -> Path:
    path = home.executions / f"{record.name}.json"
    write_json(path, record.to_json())
    return path


def _parse(path: Path, data: Any) -> ExecutionRecord:
    try:
        return ExecutionRecord(**data)
    except TypeError as error:
        raise StateFileError(f"{path}: not an execution record: {error}") from None


def list_executions(home: StateHome) -> tuple[list[ExecutionRecord], list[str]]:
    """Every readable execution, oldest first, and a problem line per unreadable record."""
    loaded, problems = read_records(home.executions)
    records = []
    for path, data in loaded:
        try:
            records.append(_parse(path, data))
        except StateFileError as error:
            problems.append(str(error))
    return sorted(records, key=lambda r: r.started_at), problems


def load_execution(home: StateHome, name: str, exact: bool = False) -> ExecutionRecord:
    """By name, or (unless `exact`) by a unique prefix of a name or by ARN."""
    path = home.executions / f"{name}.json"
    if not path.is_file() and exact:
        raise GateError(f"no execution named {name!r} (see `sagegate executions`)")
    if not path.is_file():
        matches = [r for r in list_executions(home)[0] if r.name.startswith(name) or r.arn == name]
        if len(matches) != 1:
            raise GateError(f"no execution named {name!r} (see `sagegate executions`)")
        return matches[0]
    return _parse(path, read_json(path))


def execution_name(model: str, version: str) -> str:
    """A new gate execution's name when none is given: `{model}-v{version}-{6 hex}`."""
    return f"{model}-v{version}-{uuid.uuid4().hex[:6]}"


def run_gate(
    config: ModelConfig,
    project: Project,
    home: StateHome,
    version: str | None = None,
    name: str | None = None,
    prepared: LocalGate | None = None,
) -> ExecutionRecord:
    """The gate for one registered version (default: the newest); `name`: the execution's (StartExecution's);
    `prepared`: a gate `prepare()`d for this project and home beforehand."""
    execution_input = gate_input(config, project, home, version)
    name = name or execution_name(config.name, execution_input["version"])
    with prepared or LocalGate(project, home) as gate:
        return gate.execute(execution_input, name=name)
