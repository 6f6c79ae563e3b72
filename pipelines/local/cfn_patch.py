"""The only patch to moto's CloudFormation: change sets behave like stacks created directly.

`aws cloudformation deploy` (what scripts/deploy.sh runs) creates and executes change sets. moto
5.2.5 builds a change set's new stack without the account's exports, so a template that imports
another stack's output fails, and executing the set neither computes the stack's outputs nor
publishes its exports, so no later stack can import them. `create_stack`/`update_stack` do both;
the wrappers here make `CreateChangeSet`/`ExecuteChangeSet` do the same, and keep the executed
parameters so an unchanged redeploy is recognised as empty. And as on AWS, an unchanged template
gives a change set that FAILS with "didn't contain changes" (which `deploy
--no-fail-on-empty-changeset` accepts), not moto's UpdateStack error at CreateChangeSet.
"""

from __future__ import annotations

from typing import Any

from moto.cloudformation.models import CloudFormationBackend
from moto.cloudformation.responses import CloudFormationResponse

from pipelines.local.pins import require

_original_create = CloudFormationBackend.create_change_set
_original_execute = CloudFormationBackend.execute_change_set
_original_validate = CloudFormationResponse._validate_different_update


def _validate_different_update(self: CloudFormationResponse, *args: Any) -> None:
    if self._get_action() != "CreateChangeSet":  # UpdateStack's check; a change set records "no changes"
        _original_validate(self, *args)


def _create_change_set(self: CloudFormationBackend, stack_name: str, *args: Any, **kwargs: Any) -> tuple[str, str]:
    change_set_id, stack_id = _original_create(self, stack_name, *args, **kwargs)
    stack = self.stacks[stack_id]
    stack.cross_stack_resources = self.exports  # what create_stack gives a new stack
    stack.resource_map.cross_stack_resources = self.exports
    return change_set_id, stack_id


def _execute_change_set(self: CloudFormationBackend, change_set_name: str, stack_name: str | None = None) -> None:
    _original_execute(self, change_set_name, stack_name)
    change_set = self.change_sets.get(change_set_name) or next(
        c for c in self.change_sets.values() if c.change_set_name == change_set_name
    )
    stack = self.stacks[change_set.stack_id]
    # effective values, defaults included: what the CLI's next change set sends (UsePreviousValue)
    stack.parameters = dict(stack.stack_parameters)
    stack._parse_template()
    stack.description = stack.template_dict.get("Description")
    stack.output_map = stack._create_output_map()
    for name in [name for name, export in self.exports.items() if export.exporting_stack_id == stack.stack_id]:
        del self.exports[name]  # an update may drop or rename exports
    self._validate_export_uniqueness(stack)
    for export in stack.exports:
        self.exports[export.name] = export


def install() -> None:
    """Idempotent; refuses a moto version the wrappers were not written for."""
    require("moto")
    CloudFormationBackend.create_change_set = _create_change_set  # type: ignore[method-assign]
    CloudFormationBackend.execute_change_set = _execute_change_set  # type: ignore[method-assign]
    CloudFormationResponse._validate_different_update = _validate_different_update  # type: ignore[method-assign]


def uninstall() -> None:
    CloudFormationBackend.create_change_set = _original_create  # type: ignore[method-assign]
    CloudFormationBackend.execute_change_set = _original_execute  # type: ignore[method-assign]
    CloudFormationResponse._validate_different_update = _original_validate  # type: ignore[method-assign]
