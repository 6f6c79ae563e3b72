"""Where the code that runs outside this package lives, and the images it runs on.

Job and serving code (`containers/`), the gate's Lambda handlers (`lambdas/`), the CloudFormation
templates (`cloudformation/`) and the example models (`models/`) ship as the package data
`pipelines/assets/` (setup.py maps each folder there); an editable install finds them in the
checkout its PEP 610 record (`direct_url.json`) names. Either way every command finds them from
any working directory, and nothing else locates them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import distributions
from pathlib import Path
from urllib.parse import unquote, urlparse

SKLEARN_VERSION = "1.2-1"  # the SDK's scikit-learn framework images (training, processing, inference)


@cache
def _assets_root() -> Path:
    packaged = Path(__file__).resolve().parent / "assets"
    if packaged.is_dir():  # a wheel install: package data
        return packaged
    # an editable install: the checkout its PEP 610 record names (a build's sagegate.egg-info, if on
    # the path too, has no such record)
    for installed in distributions(name="sagegate"):
        record = json.loads(installed.read_text("direct_url.json") or "{}")
        if record.get("dir_info", {}).get("editable"):
            return Path(unquote(urlparse(record["url"]).path))
    raise FileNotFoundError("sagegate's package data (containers/, lambdas/, ...) is missing: reinstall sagegate")


def asset_folder(name: str) -> Path:
    """`containers`, `lambdas`, `cloudformation` or `models`, wherever the package's data is."""
    return _assets_root() / name


def container_code(job: str, script: str | None = None) -> Path:
    """`containers/{job}/` (or one script in it): code that runs inside a SageMaker container."""
    folder = asset_folder("containers") / job
    return folder / script if script else folder


def lambda_handler_path(kind: str) -> Path:
    return asset_folder("lambdas") / kind / "app.py"


def template_path(name: str) -> Path:
    return asset_folder("cloudformation") / name
