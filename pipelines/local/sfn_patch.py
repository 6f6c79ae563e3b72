"""The only patch to moto: run the gate's ASL in moto's Step Functions interpreter, for real.

moto 5.2.5's interpreter executes ASL with AWS-shaped history, Retry and Catch, but (1) with
`lambda.use_docker: False` a Lambda invocation runs no code, and (2) it forwards SageMaker
tasks to moto's fake SageMaker, whose errors surface as uncatchable States.Runtime. Here
(1) an invocation calls the real handler (errors returned the way Lambda returns them; the
functions' environment is set once by the caller, on its main thread, never from here), and
(2) SageMaker tasks go to the local endpoint manager, with errors named as Step Functions names
them on AWS. `tests/test_sfn_patch.py` fails when an upgrade moves or reshapes anything patched here.

Importing the interpreter also imports `moto.batch` for one enum, and that package's `__init__`
imports its models, EC2's models, and EC2's instance-type tables: 1 s and 53 MB of the gate's
process for a task type the gate never uses. The interpreter is imported with the package's
`__init__` skipped (its submodules import as usual; a later `import moto.batch` runs it in full).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def _package_init_skipped(name: str) -> Iterator[None]:
    if name in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(name)
    assert spec is not None, name
    sys.modules[name] = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
    try:
        yield
    finally:
        del sys.modules[name]


with _package_init_skipped("moto.batch"):  # the interpreter without moto.batch's __init__ (see above)
    from botocore.exceptions import ClientError
    from moto.awslambda.exceptions import LambdaClientError
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEvent
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import (
        ResourceCondition,
        ServiceResource,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
    from moto.stepfunctions.parser.asl.parse import preprocessor

    from pipelines.local.endpoints import EndpointManager, SageMakerError
    from pipelines.local.pins import require

Handler = Callable[[dict[str, Any], Any], Any]
SERVICE_ERROR_NAMES = {
    "sagemaker": "SageMaker",
    "applicationautoscaling": "ApplicationAutoScaling",
    "cloudwatch": "CloudWatch",
}

_handlers: dict[str, Handler] = {}
_manager: list[EndpointManager] = []
_original_state_task_for = preprocessor.state_task_for
_original_invoke = LambdaSimpleBackend.invoke


class LambdaServiceError(Exception):
    """Raised by a handler to make the Lambda *service* fail the invocation (throttling, outage),
    which Step Functions names `Lambda.<code>` and the gate retries."""

    def __init__(
        self, code: str = "TooManyRequestsException", status: int = 429, message: str = "Rate exceeded"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class LambdaContext:
    """What a handler's context offers on AWS (powertools reads these)."""

    def __init__(self, function: Any) -> None:
        self.function_name = function.function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.function_arn
        self.memory_limit_in_mb = int(function.memory_size or 128)
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.function_name}"
        self.log_stream_name = self.aws_request_id

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _invoke(
    self: LambdaSimpleBackend, function_name: str, qualifier: str | None, body: Any, headers: Any, response_headers: Any
) -> bytes | None:
    function = self.get_function(function_name, qualifier)
    handler = _handlers.get(function.function_name)
    if handler is None:
        return _original_invoke(self, function_name, qualifier, body, headers, response_headers)
    event = json.loads(body) if body else {}
    try:
        result = handler(event, LambdaContext(function))
    except LambdaServiceError as error:
        service_error = LambdaClientError(error.code, str(error))
        service_error.code = error.status
        raise service_error from None
    except Exception as error:  # Lambda reports any handler exception as an Unhandled function error
        response_headers["x-amz-function-error"] = "Unhandled"
        payload = {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_tb(error.__traceback__)[-5:],
        }
        return json.dumps(payload).encode()
    return json.dumps(result).encode()


class LocalServiceTask(StateTaskServiceCallback):
    """SageMaker tasks (`arn:aws:states:::sagemaker:*`, `...:aws-sdk:sagemaker:*`) and the realtime
    branch's autoscaling and alarm calls (`aws-sdk:applicationautoscaling:*`, `aws-sdk:cloudwatch:*`)
    on the local endpoint manager."""

    def __init__(self) -> None:
        super().__init__(supported_integration_patterns={ResourceCondition.WaitForTaskToken})

    def _validate_service_integration_is_supported(self) -> None:
        return None

    def _get_boto_service_name(self, boto_service_name: str | None = None) -> str:
        return {"applicationautoscaling": "application-autoscaling"}.get(self.resource.api_name, self.resource.api_name)

    def _error_name(self) -> str:
        # AWS names an optimised-integration error SageMaker.AmazonSageMakerException and an
        # aws-sdk one {Service}.{Service}Exception; all match States.TaskFailed.
        if self.resource.service_name != "aws-sdk":
            return "SageMaker.AmazonSageMakerException"
        service = SERVICE_ERROR_NAMES[self.resource.api_name]
        return f"{service}.{service}Exception"

    def _from_error(self, env: Any, ex: Exception) -> FailureEvent:
        if isinstance(ex, SageMakerError | ClientError):
            message = ex.message if isinstance(ex, SageMakerError) else str(ex)
            code = ex.code if isinstance(ex, SageMakerError) else "ClientError"
            error = self._error_name()
            cause = f"{message} (Service: SageMaker, Status Code: 400, Error Code: {code})"
            return FailureEvent(
                env=env,
                error_name=CustomErrorName(error),
                event_type=HistoryEventType.TaskFailed,
                event_details=EventDetails(
                    taskFailedEventDetails=TaskFailedEventDetails(
                        error=error,
                        cause=cause,
                        resource=self._get_sfn_resource(),
                        resourceType=self._get_sfn_resource_type(),
                    )
                ),
            )
        return super()._from_error(env=env, ex=ex)

    def _eval_service_task(
        self, env: Any, resource_runtime_part: Any, normalised_parameters: dict, state_credentials: Any
    ) -> None:
        if not _manager:
            raise SageMakerError("ServiceUnavailable", "no local endpoint manager is installed")
        env.stack.append(_manager[0].call(self.resource.api_action, normalised_parameters))


def _state_task_for(resource: Any) -> Any:
    if isinstance(resource, ServiceResource) and (
        resource.service_name == "sagemaker" or resource.api_name in SERVICE_ERROR_NAMES
    ):
        return LocalServiceTask()
    return _original_state_task_for(resource)


def install(manager: EndpointManager, handlers: dict[str, Handler]) -> None:
    """Route SageMaker tasks to `manager` and the named Lambda functions to their handlers."""
    require("moto")
    _manager[:] = [manager]
    _handlers.clear()
    _handlers.update(handlers)
    preprocessor.state_task_for = _state_task_for
    LambdaSimpleBackend.invoke = _invoke


def uninstall() -> None:
    preprocessor.state_task_for = _original_state_task_for
    LambdaSimpleBackend.invoke = _original_invoke
    _manager.clear()
    _handlers.clear()
