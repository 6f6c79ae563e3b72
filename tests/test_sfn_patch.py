"""moto is pinned because sagegate patches its Step Functions internals; these tests fail on an
upgrade that moves them, and record the interpreter differences from AWS the gate is built around."""

from __future__ import annotations

import inspect
import json
import time

import boto3
import moto
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.parse import preprocessor
from moto.stepfunctions.parser.asl.utils import boto_client

from pipelines.local.pins import PINNED

ROLE = "arn:aws:iam::123456789012:role/states"


def test_moto_is_the_pinned_version() -> None:
    assert moto.__version__ == PINNED["moto"]


def test_patched_internals_still_have_their_shape() -> None:
    assert list(inspect.signature(preprocessor.state_task_for).parameters) == ["resource"]
    assert list(inspect.signature(LambdaSimpleBackend.invoke).parameters) == [
        "self",
        "function_name",
        "qualifier",
        "body",
        "headers",
        "response_headers",
    ]
    assert list(inspect.signature(StateTaskServiceCallback._eval_service_task).parameters) == [
        "self",
        "env",
        "resource_runtime_part",
        "normalised_parameters",
        "state_credentials",
    ]
    assert "MOTO_PORT" in inspect.getsource(boto_client) or "moto_server_port" in inspect.getsource(boto_client)


def run(definition: dict, execution_input: dict) -> dict:
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    arn = sfn.create_state_machine(name=f"m{time.monotonic_ns()}", definition=json.dumps(definition), roleArn=ROLE)[
        "stateMachineArn"
    ]
    execution = sfn.start_execution(stateMachineArn=arn, input=json.dumps(execution_input))["executionArn"]
    while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
        time.sleep(0.02)
    return described


@pytest.fixture
def interpreter():
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield


def test_path_through_an_array_index_returns_a_one_item_list(interpreter) -> None:
    """AWS gives "a"; moto ["a"], so a Choice on such a path never matches. The gate's ASL uses
    no path through an array index (test_gate_definition checks every path)."""
    definition = {
        "StartAt": "Pick",
        "States": {"Pick": {"Type": "Pass", "Parameters": {"first.$": "$.items[0].name"}, "End": True}},
    }
    result = run(definition, {"items": [{"name": "a"}]})
    assert json.loads(result["output"]) == {"first": ["a"]}


def test_choice_without_match_or_default_is_states_runtime(interpreter) -> None:
    """AWS raises States.NoChoiceMatched; moto States.Runtime. Every gate Choice has a Default."""
    definition = {
        "StartAt": "Pick",
        "States": {
            "Pick": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEquals": "y", "Next": "Done"}]},
            "Done": {"Type": "Succeed"},
        },
    }
    result = run(definition, {"x": "z"})
    assert (result["status"], result["error"]) == ("FAILED", "States.Runtime")


def test_catch_all_swallows_a_path_error(interpreter) -> None:
    """AWS cannot catch a ResultSelector/Parameters path error (States.Runtime); moto can. The
    evaluator therefore always returns every key the gate selects (tested in test_evaluator)."""
    definition = {
        "StartAt": "Select",
        "States": {
            "Select": {
                "Type": "Pass",
                "Parameters": {"missing.$": "$.not_there"},
                "Next": "Done",
            },
            "Done": {"Type": "Succeed"},
        },
    }
    uncaught = run(definition, {})
    assert uncaught["status"] == "FAILED"
    task = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "f", "Payload": {"missing.$": "$.not_there"}},
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "Result": "caught", "End": True},
        },
    }
    caught = run(task, {})
    assert (caught["status"], caught["output"]) == ("SUCCEEDED", "caught")
