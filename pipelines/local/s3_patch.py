"""The only patch to moto's S3: every stored object is written through to the state folder.

moto keeps objects in memory. Local mode needs them on disk the moment S3 acknowledges them,
as on AWS: a run SIGKILLed after its model upload must not leave an MLflow version pointing at
an object that only existed in a dead process. All of moto's writes (PutObject, multipart
completion, CopyObject) go through `S3Backend.put_object` and all deletes through
`S3Backend.delete_object`; both are wrapped here to mirror `s3/{bucket}/{key}` atomically.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from moto.s3.models import S3Backend

from pipelines.local.pins import require
from pipelines.statefiles import write_bytes

_original_put = S3Backend.put_object
_original_delete = S3Backend.delete_object
_state: dict[str, Any] = {"root": None, "users": 0, "loading": False}
_guard = threading.Lock()


class MirrorKeyError(ValueError):
    """A key that would land outside the mirror folder (`..` segments)."""


def mirror_path(root: Path, bucket: str, key: str) -> Path:
    path = (root / bucket / key).resolve()
    if not path.is_relative_to(root.resolve() / bucket):
        raise MirrorKeyError(f"s3://{bucket}/{key}: key escapes the bucket folder")
    return path


def _mirrored(key_name: str) -> Path | None:
    root = _state["root"]
    if root is None or _state["loading"] or key_name.endswith("/"):
        return None
    return root


def _put_object(self: S3Backend, bucket_name: str, key_name: str, value: bytes, *args: Any, **kwargs: Any) -> Any:
    root = _mirrored(key_name)
    if root is not None:
        target = mirror_path(root, bucket_name, key_name)  # refuse before storing anything
    key = _original_put(self, bucket_name, key_name, value, *args, **kwargs)
    if root is not None:
        write_bytes(target, key.value)
    return key


def _delete_object(self: S3Backend, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
    result = _original_delete(self, bucket_name, key_name, *args, **kwargs)
    root = _mirrored(key_name)
    if root is not None and key_name not in self.get_bucket(bucket_name).keys:
        mirror_path(root, bucket_name, key_name).unlink(missing_ok=True)
    return result


def install(root: Path) -> None:
    """Mirror objects under `root` until the matching `uninstall` (one mirror per process)."""
    require("moto")
    with _guard:
        if _state["users"] and _state["root"] != root:
            raise RuntimeError(f"a local S3 mirrored to {_state['root']} is already running in this process")
        _state["root"], _state["users"] = root, _state["users"] + 1
        S3Backend.put_object = _put_object  # type: ignore[method-assign]
        S3Backend.delete_object = _delete_object  # type: ignore[method-assign]


def uninstall() -> None:
    with _guard:
        _state["users"] = max(0, _state["users"] - 1)
        if _state["users"] == 0:
            _state["root"] = None
            S3Backend.put_object = _original_put  # type: ignore[method-assign]
            S3Backend.delete_object = _original_delete  # type: ignore[method-assign]


class loading:
    """Objects read from the mirror into moto are not written back to it."""

    def __enter__(self) -> None:
        _state["loading"] = True

    def __exit__(self, *exc: object) -> None:
        _state["loading"] = False
