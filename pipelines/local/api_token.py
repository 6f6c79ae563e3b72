"""The local token that state-changing API calls must carry (the state folder's `api-token`, mode 0600).

Read APIs answer anyone on 127.0.0.1; starting a run changes state, so the caller proves it can read
the state folder: boto3's `aws_session_token` (the AWS CLI's `AWS_SESSION_TOKEN`) carries the token
in the `X-Amz-Security-Token` header, compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from pipelines.state import StateHome


def token_path(home: StateHome) -> Path:
    return home.root / "api-token"


def local_token(home: StateHome) -> str:
    """The token, created on first use (readable by its owner only; two creators agree on one file)."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_urlsafe(32))
            stream.flush()
            os.fsync(stream.fileno())
    token = path.read_text().strip()
    if not token:  # a creator killed between create and write: start over
        path.unlink(missing_ok=True)
        return local_token(home)
    return token


def authorized(home: StateHome, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(str(presented).encode(), local_token(home).encode())
