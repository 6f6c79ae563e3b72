"""The exact versions of the third-party packages whose internals sagegate patches.

Each patch module calls `require` when it installs, so an upgrade fails loudly at the patch
instead of half-working; `tests/test_patches.py` fails on an upgrade too.
"""

from __future__ import annotations

from importlib.metadata import version

PINNED = {
    # sfn_patch (Lambda and SageMaker tasks), cfn_patch (change sets)
    "moto": "5.2.5",
    "botocore": "1.44.5",  # botocore_patch (one data loader per process)
    "sagemaker": "2.257.7",  # sdk_patch (jobs as subprocesses, stopping condition)
    "stepfunctions": "2.3.0",  # sfn_sdk_fields (ResultSelector, CausePath)
}


class PatchedVersionError(RuntimeError):
    """An installed package is not the version sagegate's patch was written for."""


def require(package: str) -> None:
    installed = version(package)
    if installed != PINNED[package]:
        raise PatchedVersionError(
            f"sagegate patches {package} {PINNED[package]} internals; {package} {installed} is installed "
            f"(pin it in setup.cfg, or port the patch and its test)"
        )
