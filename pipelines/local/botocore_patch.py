"""One botocore data loader per process, shared by every botocore session in it.

botocore gives each session a loader of its own, and each loader parses the JSON it is asked for
afresh. A `sagegate run` makes eleven sessions (the SDK's at import, the X-Ray SDK's, moto's, our
own), so its control plane parsed the endpoint rules eleven times and the SageMaker and S3 models
three times each: 97 MB of its memory (tracemalloc) and the time to parse them. A loader only
reads botocore's data files and memoizes them, so one per search path serves every session.
"""

from __future__ import annotations

import functools

import botocore.loaders
import botocore.session

from pipelines.local.pins import require

_original_create_loader = botocore.session.create_loader


def install() -> None:
    require("botocore")
    if botocore.session.create_loader is _original_create_loader:
        botocore.session.create_loader = functools.cache(botocore.loaders.create_loader)


def uninstall() -> None:
    botocore.session.create_loader = _original_create_loader
