"""The gate's ASL: exported offline, wired completely, accepted by both validators (which catch defects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.gate import SUBSTITUTIONS, gate_definition, gate_definition_json, substitute

ROOT = Path(__file__).resolve().parent.parent
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
STATELINT = Path(sys.executable).parent / "statelint"


def targets(state: dict) -> list[str]:
    found = [state.get("Next"), state.get("Default")]
    found += [choice["Next"] for choice in state.get("Choices", [])]
    found += [catch["Next"] for catch in state.get("Catch", [])]
    return [t for t in found if t]


def test_every_transition_targets_an_existing_state_and_every_state_is_reachable() -> None:
    definition = gate_definition()
    states = definition["States"]
    reached, frontier = set(), [definition["StartAt"]]
    while frontier:
        name = frontier.pop()
        assert name in states, f"dangling transition to {name}"
        if name not in reached:
            reached.add(name)
            frontier += targets(states[name])
    assert reached == set(states)


def test_shape_of_the_gate() -> None:
    states = gate_definition()["States"]
    evaluate = states["EvaluateModel"]
    assert evaluate["Retry"][0]["ErrorEquals"] == [
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    ]
    assert evaluate["Retry"][0]["BackoffRate"] == 2.0
    assert evaluate["Catch"][0]["Next"] == "EvaluationFailed"
    choose = states["ChooseDeployment"]
    assert {c["StringEquals"]: c["Next"] for c in choose["Choices"]} == {
        "deploy_realtime": "CreateRealtimeModel",
        "deploy_serverless": "CreateServerlessModel",
    }
    assert choose["Default"] == "Rejected"
    assert states["Rejected"] == {"Type": "Fail", "Error": "Sagegate.Rejected", "CausePath": "$.evaluation.reason"}
    # every Choice has a Default (moto and AWS disagree on the no-match error), every Task a Catch
    for name, state in states.items():
        if state["Type"] == "Choice":
            assert "Default" in state, name
        if state["Type"] == "Task" and not name.startswith("Find"):
            assert state["Catch"][0]["ErrorEquals"] == ["States.ALL"], name
    serverless = states["CreateServerlessEndpointConfig"]["Parameters"]["ProductionVariants"][0]
    assert set(serverless["ServerlessConfig"]) == {"MemorySizeInMB.$", "MaxConcurrency.$"}
    realtime = states["CreateRealtimeEndpointConfig"]["Parameters"]
    assert "ModelName.$" not in realtime["ProductionVariants"][0]
    assert realtime["ExecutionRoleArn"] == "${InferenceRoleArn}"
    assert (
        realtime["ProductionVariants"][0]["ManagedInstanceScaling"]["MinInstanceCount.$"]
        == "$.deployment.min_instances"
    )


def test_export_is_deterministic_and_matches_the_cli() -> None:
    assert gate_definition_json() == gate_definition_json()
    printed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "gate", "definition"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(printed) == gate_definition()


def test_substitution_requires_every_placeholder() -> None:
    with pytest.raises(ValueError, match="InferenceRoleArn"):
        substitute(gate_definition(), {"EvaluatorFunctionArn": "a", "PromoterFunctionArn": "b"})
    text = substitute(gate_definition(), dict.fromkeys(SUBSTITUTIONS, "arn:aws:lambda:us-east-1:1:function:f"))
    assert "${" not in text


def validate(tmp_path: Path, definition: dict) -> tuple[int, int]:
    path = tmp_path / "asl.json"
    path.write_text(json.dumps(definition))
    asl = subprocess.run([str(ASL_VALIDATOR), "--json-path", str(path)], capture_output=True, text=True)
    lint = subprocess.run([str(STATELINT), str(path)], capture_output=True, text=True)
    return asl.returncode, lint.returncode


def test_both_validators_accept_the_gate_and_reject_seeded_defects(tmp_path: Path) -> None:
    assert validate(tmp_path, gate_definition()) == (0, 0)
    dangling = gate_definition()
    dangling["States"]["RecordChampion"]["Next"] = "NoSuchState"
    missing_type = gate_definition()
    del missing_type["States"]["ChooseDeployment"]["Type"]
    bad_path = gate_definition()
    bad_path["States"]["WaitForServerlessEndpoint"]["SecondsPath"] = "poll_seconds"
    for defect in (dangling, missing_type, bad_path):
        asl, lint = validate(tmp_path, defect)
        assert asl != 0 or lint != 0


def test_no_path_goes_through_an_array_index() -> None:
    """moto resolves `$.a[0].b` to a one-item list (AWS: the element); the gate must not depend on it."""
    text = json.dumps(gate_definition())
    assert "[0]" not in text and "[*]" not in text
