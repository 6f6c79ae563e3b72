"""Where the code that runs outside this package lives, and the images it runs on.

Job and serving code (`containers/`), the gate's Lambda handlers (`lambdas/`), the CloudFormation
templates (`cloudformation/`) and the example models (`models/`) ship as the package data
`pipelines/assets/` (setup.py maps each folder there); an editable install finds them in the
checkout its PEP 610 record (`direct_url.json`) names. Either way every command finds them from
any working directory, and nothing else locates them.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib.metadata import distributions
from pathlib import Path
from urllib.parse import unquote, urlparse

# The runtime image's build context (containers/): what its content-addressed tag hashes.
IMAGE_FILES = ("Dockerfile", "requirements.lock", "entrypoint.sh", "inference/inference.py", "inference/serve.py")


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


def content_digest(files: dict[str, Path], length: int = 16) -> str:
    """A hash of named files (names and contents, in name order): the key of anything content-addressed
    (the image tag, Lambda packages, uploaded definitions)."""
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:length]


def context_digest(folder: Path) -> str:
    """A hash of the image's build-context files in `folder` (names and contents)."""
    return content_digest({name: folder / name for name in IMAGE_FILES})


@cache
def image_tag() -> str:
    """The runtime image's tag: the hash of its build context, so a tag names one content and an
    unchanged image is never rebuilt (the ECR repository's tags are immutable)."""
    return context_digest(asset_folder("containers"))


def locked_versions() -> dict[str, str]:
    """The runtime image's packages (`containers/requirements.lock`): name → version."""
    return dict(_locked())


@cache
def _locked() -> tuple[tuple[str, str], ...]:
    lines = (asset_folder("containers") / "requirements.lock").read_text().splitlines()
    pins = (line.split("#", 1)[0].strip() for line in lines)
    return tuple(tuple(pin.split("==", 1)) for pin in pins if pin)  # type: ignore[misc]
