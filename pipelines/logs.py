"""What sagegate's commands print besides their own output: third-party logs and warnings, tamed.

The SDK, botocore and MLflow log at INFO by default and sagegate prints its own progress, so
their loggers are raised to ERROR. Warnings are filtered one by one, each named with its reason;
anything else still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

# (message regex, category, module regex, why it is safe to hide)
KNOWN_WARNINGS = [
    (r".*pkg_resources is deprecated.*", UserWarning, r".*", "imported by a dependency, not by sagegate"),
    (r".*datetime\.datetime\.utcnow\(\) is deprecated.*", DeprecationWarning, r".*", "botocore/moto internals"),
    (r".*Field name .* shadows an attribute in parent.*", UserWarning, r".*", "sagemaker SDK's pydantic models"),
    (
        r"Running within a PipelineSession, there will be No Wait, No Logs, and No Job being started",
        UserWarning,
        r"sagemaker\.workflow\.pipeline_context",
        "the SDK says so for every step a pipeline definition builds, and building one is the point",
    ),
    (
        r"The ``noload`` loader strategy is deprecated",
        DeprecationWarning,
        r"mlflow\.store\..*",
        "mlflow's SQLAlchemy store (SQLAlchemy 2.1 deprecation), not sagegate's code",
    ),
]


def quiet_sdk_logs() -> None:
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for message, category, module, _reason in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("sagemaker", "sagemaker.config", "botocore", "boto3", "mlflow", "alembic", "moto", "werkzeug"):
        logging.getLogger(name).setLevel(logging.ERROR)
