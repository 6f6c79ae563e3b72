"""Process environment set for a scope and put back exactly as it was.

The local runtime tells its jobs, handlers and SDK clients where things are through variables
(endpoints, logs, sockets); every scope that sets some must leave the caller's untouched."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


class SavedEnvironment:
    """Remembers each variable's value before its first change; `restore` puts them all back."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def set(self, values: Mapping[str, str]) -> None:
        for key in values:
            self._saved.setdefault(key, os.environ.get(key))
        os.environ.update(values)

    def unset(self, keys: list[str]) -> None:
        for key in keys:
            self._saved.setdefault(key, os.environ.get(key))
            os.environ.pop(key, None)

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = SavedEnvironment()
    saved.set(values)
    try:
        yield
    finally:
        saved.restore()
