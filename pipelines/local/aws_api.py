"""The SageMaker and Step Functions read APIs users script against, answered from the local state.

The gateway's URL is also a SageMaker and Step Functions endpoint for an unmodified boto3 client or
the AWS CLI (`--endpoint-url`): both speak the JSON protocol (`POST /` with `X-Amz-Target:
SageMaker.ListPipelines`, `AWSStepFunctions.DescribeExecution`, ...). Answers follow the APIs'
shapes, built from the state folder's records (runs, gate executions, endpoints, the registry);
errors use their codes (`ResourceNotFound`, `ValidationException`, `ExecutionDoesNotExist`,
`UnknownOperationException`, `AccessDeniedException`). The calls that change state,
`StartPipelineExecution` and `StartExecution`, need the local token (`api_token`) and run `sagegate
run` / `sagegate gate run` as their own processes, exactly as the command line would.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipelines.config import ConfigError, discovered_configs, find_model_config_path
from pipelines.local.api_token import authorized
from pipelines.local.endpoints import EndpointManager, SageMakerError
from pipelines.local.launch import LaunchError, gate_command, run_gate_process, start_run
from pipelines.state import Project, StateHome

Answer = tuple[int, dict[str, Any]]
STATE_CHANGING = {"SageMaker.StartPipelineExecution", "AWSStepFunctions.StartExecution"}
EXECUTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # Step Functions' rule; names never reach a path unchecked
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
GATE_TIMEOUT_SECONDS = 600  # StartExecution answers once the local gate has finished


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


class LocalApis:
    """One handler per operation, named as the API names it."""

    def __init__(self, home: StateHome, project: Project) -> None:
        self.home, self.project = home, project

    def call(self, target: str, body: bytes, token: str | None = None) -> Answer:
        service, _, operation = target.partition(".")
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self, f"{service}_{operation}", None)
        try:
            if service not in ("SageMaker", "AWSStepFunctions") or handler is None:
                raise ApiError("UnknownOperationException", f"{target} is not served locally")
            if target in STATE_CHANGING and not authorized(self.home, token):
                raise ApiError(
                    "AccessDeniedException",
                    f"{operation} changes state: pass the local token ({self.home.root / 'api-token'}) as the "
                    "session token (boto3 aws_session_token, AWS_SESSION_TOKEN)",
                    status=403,
                )
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise ApiError("SerializationException", "the request body is not JSON") from None
            if not isinstance(request, dict):
                raise ApiError("SerializationException", "the request body is not a JSON object")
            return 200, handler(request)
        except ApiError as error:
            return error.status, {"__type": error.code, "message": error.message}
        except SageMakerError as error:
            return 400, {"__type": error.code, "message": str(error)}

    # ---- SageMaker: pipelines and their executions (local runs) -----------------------------------

    def _runs(self) -> list[Any]:
        from pipelines.local_run import list_records

        return [record.settled() for record in list_records(self.home)[0] if record.platform == "local"]

    def _pipeline_arn(self, pipeline: str) -> str:
        return f"arn:aws:sagemaker:{self.project.region}:{self.project.account}:pipeline/{pipeline}"

    def _execution_arn(self, record: Any) -> str:
        """By the record's attempt id: known before the run starts (StartPipelineExecution's answer), stable
        after (the run id becomes the pipeline execution's once the SDK starts it)."""
        return f"{self._pipeline_arn(record.pipeline)}/execution/{record.attempt or record.run_id}"

    def _run(self, arn: str) -> Any:
        if not isinstance(arn, str) or "/execution/" not in arn:
            raise ApiError("ValidationException", f"PipelineExecutionArn {arn!r} is not a pipeline execution ARN")
        for record in self._runs():
            if self._execution_arn(record) == arn:
                return record
        raise ApiError("ResourceNotFound", f"Pipeline execution {arn} does not exist.")

    def SageMaker_StartPipelineExecution(self, request: dict[str, Any]) -> dict[str, Any]:
        """`sagegate run` on the pipeline's model YAML, as its own process; answers once its record exists."""
        name = str(request.get("PipelineName", ""))
        if request.get("PipelineParameters"):
            raise ApiError("ValidationException", "PipelineParameters: a local run takes its data from the model YAML")
        config_path = next(
            (path for path, config in discovered_configs() if self.project.pipeline_name(config.name) == name), None
        )
        if config_path is None:
            raise ApiError("ResourceNotFound", f"Pipeline {name} does not exist (no model YAML for it).")
        try:
            attempt = start_run(self.home, self.project, config_path)
        except LaunchError as error:
            raise ApiError("InternalFailure", str(error), status=500) from None
        return {"PipelineExecutionArn": f"{self._pipeline_arn(name)}/execution/{attempt}"}

    def SageMaker_ListPipelines(self, request: dict[str, Any]) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        for record in self._runs():
            if record.pipeline not in latest or record.started_at > latest[record.pipeline].started_at:
                latest[record.pipeline] = record
        prefix = request.get("PipelineNamePrefix", "")
        return {
            "PipelineSummaries": [
                {
                    "PipelineArn": self._pipeline_arn(name),
                    "PipelineName": name,
                    "PipelineDisplayName": name,
                    "LastExecutionTime": _epoch(record.started_at),
                }
                for name, record in sorted(latest.items())
                if name.startswith(prefix)
            ]
        }

    def SageMaker_ListPipelineExecutions(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("PipelineName")
        if not name:
            raise ApiError("ValidationException", "PipelineName is required")
        records = sorted((r for r in self._runs() if r.pipeline == name), key=lambda r: r.started_at, reverse=True)
        return {
            "PipelineExecutionSummaries": [
                {
                    "PipelineExecutionArn": self._execution_arn(record),
                    "StartTime": _epoch(record.started_at),
                    "PipelineExecutionStatus": record.status,
                    "PipelineExecutionDisplayName": record.run_id,
                    **({"PipelineExecutionFailureReason": record.failure_reason} if record.failure_reason else {}),
                }
                for record in records
            ]
        }

    def SageMaker_DescribePipelineExecution(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._run(request.get("PipelineExecutionArn", ""))
        started = _epoch(record.started_at) or 0.0
        return {
            "PipelineArn": self._pipeline_arn(record.pipeline),
            "PipelineExecutionArn": self._execution_arn(record),
            "PipelineExecutionDisplayName": record.run_id,
            "PipelineExecutionStatus": record.status,
            "CreationTime": started,
            "LastModifiedTime": started + record.duration_seconds,
            **({"FailureReason": record.failure_reason} if record.failure_reason else {}),
        }

    def SageMaker_ListPipelineExecutionSteps(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._run(request.get("PipelineExecutionArn", ""))
        return {
            "PipelineExecutionSteps": [
                {
                    "StepName": step.name,
                    "StepStatus": step.status,
                    **({"FailureReason": step.failure_reason} if step.failure_reason else {}),
                }
                for step in reversed(record.steps)  # newest first, as SageMaker lists them
            ]
        }

    # ---- SageMaker: endpoints and model packages ----------------------------------------------------

    def SageMaker_ListEndpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        manager = EndpointManager(self.home, self.project)
        described = [
            manager.call("describeEndpoint", {"EndpointName": n}) for n in sorted(manager.snapshot()["endpoints"])
        ]
        return {
            "Endpoints": [
                {key: endpoint[key] for key in ("EndpointName", "EndpointArn", "EndpointStatus") if key in endpoint}
                | {
                    "CreationTime": _epoch(endpoint.get("CreationTime")),
                    "LastModifiedTime": _epoch(endpoint.get("LastModifiedTime")),
                }
                for endpoint in described
            ]
        }

    def SageMaker_DescribeEndpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        endpoint = EndpointManager(self.home, self.project).call(
            "describeEndpoint", {"EndpointName": request.get("EndpointName", "")}
        )
        return {**endpoint, "CreationTime": _epoch(endpoint.get("CreationTime")),
                "LastModifiedTime": _epoch(endpoint.get("LastModifiedTime"))}  # fmt: skip

    def SageMaker_ListModelPackages(self, request: dict[str, Any]) -> dict[str, Any]:
        from pipelines.registry import list_versions

        group = request.get("ModelPackageGroupName")
        rows = [row for row in list_versions(self.home)[0] if group in (None, row["name"])]
        return {
            "ModelPackageSummaryList": [
                {
                    "ModelPackageGroupName": row["name"],
                    "ModelPackageVersion": int(row["version"]),
                    "ModelPackageArn": self.project.model_package_arn(row["name"], row["version"]),
                    "CreationTime": _epoch(row["created"].replace("Z", "+00:00")),
                    "ModelPackageStatus": "Completed",
                    "ModelApprovalStatus": row["approval_status"],
                }
                for row in rows
            ]
        }

    # ---- Step Functions: the gate's executions ------------------------------------------------------

    def _executions(self) -> list[Any]:
        from pipelines.local_gate import list_executions

        return list_executions(self.home)[0]

    def _execution(self, arn: str) -> Any:
        for record in self._executions():
            if record.arn == arn:
                return record
        raise ApiError("ExecutionDoesNotExist", f"Execution Does Not Exist: '{arn}'")

    def AWSStepFunctions_StartExecution(self, request: dict[str, Any]) -> dict[str, Any]:
        """`sagegate gate run` for the input's model and version, as its own process. The local gate takes
        seconds, so this answers once it has finished: the execution is then described and listed whole."""
        machine = self.project.state_machine_name
        arn = f"arn:aws:states:{self.project.region}:{self.project.account}:stateMachine:{machine}"
        if request.get("stateMachineArn") != arn:
            raise ApiError(
                "StateMachineDoesNotExist", f"State Machine Does Not Exist: '{request.get('stateMachineArn')}'"
            )
        try:
            execution_input = json.loads(request.get("input") or "{}")
        except ValueError:
            raise ApiError("InvalidExecutionInput", "input is not JSON") from None
        model, version = execution_input.get("model"), str(execution_input.get("version") or "")
        if not isinstance(model, str) or not version.isdigit():
            raise ApiError(
                "InvalidExecutionInput", "input needs the gate's `model` and `version` (as the registration rule sends)"
            )
        from pipelines.local_gate import execution_name

        name = str(request.get("name") or execution_name(model, version))
        if not EXECUTION_NAME.fullmatch(name):
            raise ApiError("InvalidName", f"Invalid Name: '{name[:100]}' (1-80 letters, digits, - and _)")
        if not MODEL_NAME.fullmatch(model):
            raise ApiError("InvalidExecutionInput", f"model {model[:100]!r} is not a model name")
        if any(record.name == name for record in self._executions()):
            raise ApiError("ExecutionAlreadyExists", f"Execution Already Exists: '{name}'")
        try:
            config_path = find_model_config_path(model)
        except ConfigError as error:
            raise ApiError("InvalidExecutionInput", str(error)) from None
        command = gate_command(self.project, model, config_path, version, name)
        try:
            done = run_gate_process(self.home, command, GATE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise ApiError("InternalFailure", f"the gate did not finish within {GATE_TIMEOUT_SECONDS} s", 500) from None
        for record in self._executions():
            if record.name == name:
                return {"executionArn": record.arn, "startDate": _epoch(record.started_at)}
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ApiError("InvalidExecutionInput", message[0].removeprefix("error: "))

    def AWSStepFunctions_ListStateMachines(self, request: dict[str, Any]) -> dict[str, Any]:
        machines = {record.state_machine: record.started_at for record in self._executions()}
        return {
            "stateMachines": [
                {"stateMachineArn": arn, "name": arn.rsplit(":", 1)[1], "type": "STANDARD",
                 "creationDate": _epoch(min(r.started_at for r in self._executions() if r.state_machine == arn))}
                for arn in sorted(machines)
            ]
        }  # fmt: skip

    def AWSStepFunctions_ListExecutions(self, request: dict[str, Any]) -> dict[str, Any]:
        machine = request.get("stateMachineArn")
        status = request.get("statusFilter")
        records = [r for r in self._executions() if r.state_machine == machine and status in (None, r.status)]
        return {
            "executions": [
                {"executionArn": r.arn, "stateMachineArn": r.state_machine, "name": r.name, "status": r.status,
                 "startDate": _epoch(r.started_at), **({"stopDate": _epoch(r.stopped_at)} if r.stopped_at else {})}
                for r in sorted(records, key=lambda r: r.started_at, reverse=True)
            ]
        }  # fmt: skip

    def AWSStepFunctions_DescribeExecution(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._execution(request.get("executionArn", ""))
        described = {
            "executionArn": record.arn, "stateMachineArn": record.state_machine, "name": record.name,
            "status": record.status, "startDate": _epoch(record.started_at), "input": json.dumps(record.input),
        }  # fmt: skip
        if record.stopped_at:
            described["stopDate"] = _epoch(record.stopped_at)
        if record.output is not None:
            described["output"] = json.dumps(record.output)
        if record.error:
            described |= {"error": record.error, "cause": record.cause or ""}
        return described

    def AWSStepFunctions_GetExecutionHistory(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._execution(request.get("executionArn", ""))
        events = [dict(event) for event in record.events]
        for event in events:
            if isinstance(event.get("timestamp"), str):
                event["timestamp"] = _epoch(event["timestamp"])
        return {"events": list(reversed(events)) if request.get("reverseOrder") else events}
