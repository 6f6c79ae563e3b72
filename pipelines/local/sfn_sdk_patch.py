"""The only reach into the stepfunctions Data Science SDK's internals: fields its constructors refuse.

stepfunctions 2.3.0 serialises `ResultSelector` and `CausePath` from a state's `fields`, but
its constructors refuse `result_selector=` and `cause_path=`; the gate sets them here, on the
pinned version only. `tests/test_patches.py` fails when an upgrade changes this.
"""

from __future__ import annotations

from typing import Any

from stepfunctions.steps.states import State

from pipelines.local.pins import require


def _set(state: State, field: str, value: Any) -> State:
    require("stepfunctions")
    state.fields[field] = value
    return state


def result_selector(state: State, selector: dict[str, Any]) -> State:
    return _set(state, "result_selector", selector)


def cause_path(state: State, path: str) -> State:
    return _set(state, "cause_path", path)
