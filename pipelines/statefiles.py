"""Durable state files: atomic writes, cross-process locks, reads that name the bad file.

Every file under the state folder is written the same way: a unique temporary file in the
same folder, flushed and fsynced, then `os.replace`d over the target (and the folder fsynced),
so a reader sees the old content or the new, never a torn file, even if the writer is
SIGKILLed mid-write. Read-modify-write of shared files holds an `fcntl` lock on a sibling
`.lock` file, which serialises threads and processes alike and is released by the kernel
when a holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class StateFileError(ValueError):
    """A state file that cannot be read; the message names the file."""


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_json(path: Path, document: Any) -> None:
    write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The parsed file; StateFileError naming the file when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise StateFileError(f"{path}: unreadable state file: {error}") from None


# fcntl locks belong to the process: threads of one process need their own lock on top.
_thread_locks: dict[str, threading.RLock] = {}
_thread_locks_guard = threading.Lock()
_held = threading.local()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of `path` (its sibling `.{name}.lock`), across threads and processes.

    Re-entrant within a thread."""
    lock_path = path.parent / f".{path.name}.lock"
    key = str(lock_path)
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(key, threading.RLock())
    with thread_lock:
        depth = getattr(_held, key, 0)
        if depth:
            setattr(_held, key, depth + 1)
            try:
                yield
            finally:
                setattr(_held, key, depth)
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            setattr(_held, key, 1)
            try:
                yield
            finally:
                setattr(_held, key, 0)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_records(folder: Path, pattern: str = "*.json") -> tuple[list[tuple[Path, Any]], list[str]]:
    """Every readable JSON record in `folder`, and one problem line per file that is not."""
    records: list[tuple[Path, Any]] = []
    problems: list[str] = []
    if not folder.is_dir():
        return records, problems
    for path in sorted(folder.glob(pattern)):
        try:
            records.append((path, read_json(path)))
        except StateFileError as error:
            problems.append(str(error))
    return records, problems


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/{pid}/stat after the command name (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not mistaken for its predecessor."""
    fields = _stat(pid)
    return fields[19] if fields else None


def process_token(pid: int | None = None) -> str:
    """`pid:start-time` of this (or another) process: what `process_alive` checks later."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid) or ''}"


def process_alive(token: str) -> bool:
    """Whether the process a `process_token` (or a bare pid) names is still running; a zombie, dead but
    not yet reaped by its parent, is not."""
    pid_text, _, started = token.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc: the signal check is all there is
    return fields[0] != "Z" and (not started or fields[19] == started)
